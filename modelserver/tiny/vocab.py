"""What every tiny model shares: the seed, the CTC alphabet, the tag labels and a word-level
tokenizer whose every id decodes to a real word."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

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


def build_word_tokenizer(out: Path, size: int | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with LLaMA's special tokens (<unk> 0, <s> 1, </s> 2) that, like
    LLaMA's, puts <s> before every text: every id decodes to a real word. With `size` (a
    full-size LLaMA's 32000), made-up words `w<id>` fill the ids past the real ones, so every
    id a random model draws still decodes."""
    specials = ["<unk>", "<s>", "</s>"]
    punctuation = list(".,:;?!'#-()")
    words = specials + sorted(set(_WORDS)) + punctuation
    words += [f"w{i}" for i in range(len(words), size or 0)]
    vocab = {w: i for i, w in enumerate(words)}
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
