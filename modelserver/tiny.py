"""Tiny reference models: the real architectures from transformers configurations, with
deterministic weights from a fixed seed. Built locally in seconds; nothing is downloaded."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    PreTrainedTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2ForCTC,
)

from modelserver.config import ModelConfig, write_model_config

SEED = 20261124

# Characters of the CTC vocabulary, after HF's special tokens.
CTC_ALPHABET = list("|ETAONIHSRDLUMWCFGYPBVKXJQZ'")
CTC_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

# Tag classes: the synthetic sound classes of the demo dataset, and a few more.
TAG_LABELS = ["speech", "tone", "chirp", "noise", "click", "silence", "music", "bird"]

# The tiny LM's word vocabulary: its random answers are real words.
_WORDS = [
    "a",
    "an",
    "the",
    "this",
    "that",
    "is",
    "are",
    "was",
    "of",
    "in",
    "on",
    "with",
    "and",
    "or",
    "but",
    "to",
    "from",
    "by",
    "at",
    "for",
    "as",
    "it",
    "its",
    "there",
    "here",
    "sound",
    "sounds",
    "audio",
    "clip",
    "speech",
    "speaker",
    "voice",
    "man",
    "woman",
    "child",
    "music",
    "tone",
    "tones",
    "chirp",
    "chirps",
    "noise",
    "click",
    "clicks",
    "silence",
    "quiet",
    "loud",
    "soft",
    "high",
    "low",
    "pitch",
    "rising",
    "falling",
    "steady",
    "short",
    "long",
    "burst",
    "bursts",
    "beep",
    "beeps",
    "bird",
    "birds",
    "singing",
    "talking",
    "says",
    "said",
    "sentence",
    "word",
    "words",
    "repeated",
    "background",
    "foreground",
    "recording",
    "hear",
    "heard",
    "can",
    "you",
    "describe",
    "what",
    "happening",
    "event",
    "events",
    "question",
    "answer",
    "instruction",
    "response",
    "input",
    "below",
    "describes",
    "task",
    "paired",
    "provides",
    "further",
    "context",
    "write",
    "appropriately",
    "completes",
    "request",
    "yes",
    "no",
    "one",
    "two",
    "three",
    "several",
    "many",
    "some",
    "frequency",
    "hertz",
    "second",
    "seconds",
    "time",
    "start",
    "end",
    "begins",
    "ends",
    "then",
    "after",
    "before",
    "during",
    "while",
]


def build_ctc_checkpoint(out: Path, seed: int = SEED, group_norm: bool = False) -> Path:
    """A 2-layer, 64-wide Wav2Vec2ForCTC with its tokenizer, saved with `save_pretrained`.

    The default is the stable-layer-norm layout (wav2vec2-large-lv60); `group_norm` gives the
    wav2vec2-base layout, whose feature encoder is run without an attention mask.
    """
    vocab = CTC_SPECIALS + CTC_ALPHABET
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        feat_extract_norm="group" if group_norm else "layer",
        do_stable_layer_norm=not group_norm,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Wav2Vec2ForCTC(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        Wav2Vec2CTCTokenizer(str(vocab_file)).save_pretrained(out)
    return out


def build_word_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with LLaMA's special tokens (<unk> 0, <s> 1, </s> 2) that, like
    LLaMA's, puts <s> before every text: every id decodes to a real word."""
    specials = ["<unk>", "<s>", "</s>"]
    punctuation = list(".,:;?!'#-()")
    vocab = {w: i for i, w in enumerate(specials + sorted(set(_WORDS)) + punctuation)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    return fast


def make_tiny_wav2vec2(out: Path, runtime: str = "onnx") -> ModelConfig:
    """ONNX export by default; `runtime="torch"` serves the same checkpoint with PyTorch."""
    from modelserver.export import export_wav2vec2

    checkpoint = build_ctc_checkpoint(out / "checkpoint")
    config = export_wav2vec2(checkpoint, out, name="wav2vec2", version="tiny-1")
    if runtime == "torch":
        (out / config.artifact).unlink()
        config = config.model_copy(update={"runtime": "torch", "artifact": "checkpoint"})
        write_model_config(out, config)
    return config


# Tiny answers stay short: the released 400-token bound would make every test call long.
TINY_MAX_NEW_TOKENS = 32


def make_tiny_gama(out: Path, seed: int = SEED) -> Path:
    """GAMA in its released layout (base directory and stage checkpoint), tiny widths."""
    from modelserver.families.gama.release import make_tiny_release

    return make_tiny_release(out, seed).stage


def make_tiny_gama_served(release: Path, out: Path, seed: int = SEED) -> ModelConfig:
    """The tiny release, converted as `make models` does (`modelserver export`)."""
    from modelserver.config import GamaGeneration
    from modelserver.families.gama.convert import export_gama
    from modelserver.families.gama.release import make_tiny_release

    made = make_tiny_release(release, seed)
    return export_gama(
        made.stage,
        made.base,
        out,
        version="tiny-1",
        labels=made.labels.read_text().split(),
        generation=GamaGeneration(max_new_tokens=TINY_MAX_NEW_TOKENS),
    )
