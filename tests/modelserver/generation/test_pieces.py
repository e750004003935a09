"""Streamed text pieces: whole words, whole UTF-8 characters, and joined the unary answer."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from modelserver.generation.pieces import TextPieces
from modelserver.tiny.vocab import build_word_tokenizer

TEXTS = [
    "  Café crème, naïve façade: 日本語 の テキスト and Ünïcödé words.  ",
    "A bird sings\nthen a dog barks — twice.\n",
    "ok",
]


def byte_level() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on a few texts: multi-byte characters span tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["plain words only"] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def stream(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> list[str]:
    pieces = TextPieces(tokenizer)
    out = [pieces.put(i) for i in ids]
    out.append(pieces.end())
    return [p for p in out if p]


def test_pieces_hold_whole_utf8_characters_and_join_to_the_answer() -> None:
    tokenizer = byte_level()
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        # The characters really are split across tokens.
        assert len(ids) > len(text.encode()) / 2
        pieces = stream(tokenizer, ids)
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert not any("\ufffd" in p for p in pieces), pieces
        assert len(pieces) > 1 or len(text.split()) == 1


def test_pieces_end_on_word_boundaries(tmp_path: Path) -> None:
    tokenizer = build_word_tokenizer(tmp_path / "tok")
    ids = tokenizer("the bird sings in the audio clip")["input_ids"][1:]
    pieces = stream(tokenizer, ids)
    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert "".join(pieces) == answer
    words = answer.split()
    assert all(w in words for p in pieces for w in p.split())
    assert not pieces[0].startswith(" ") and not pieces[-1].endswith(" ")
