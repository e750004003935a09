"""Tiny reference models: the real architectures from transformers configurations, with
deterministic weights from a fixed seed. Built locally in seconds; nothing is downloaded."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2ForCTC,
)

from modelserver.config import GamaSettings, ModelConfig, write_model_config
from modelserver.families.gama.model import build_projector, save_projector

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
    """A word-level tokenizer: every id decodes to a real word, never to broken UTF-8."""
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    punctuation = list(".,:;?!'#-()")
    vocab = {w: i for i, w in enumerate(specials + sorted(set(_WORDS)) + punctuation)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
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


def make_tiny_gama(out: Path, seed: int = SEED) -> ModelConfig:
    out.mkdir(parents=True, exist_ok=True)
    settings = GamaSettings(num_audio_tokens=16)
    tokenizer = build_word_tokenizer(out / settings.tokenizer)
    torch.manual_seed(seed)
    encoder = ASTForAudioClassification(
        ASTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_mel_bins=settings.num_mel_bins,
            max_length=settings.max_frames,
            num_labels=len(TAG_LABELS),
            id2label=dict(enumerate(TAG_LABELS)),
            label2id={label: i for i, label in enumerate(TAG_LABELS)},
        )
    ).eval()
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    ).eval()
    projector = build_projector(encoder, lm, settings.num_audio_tokens)
    encoder.save_pretrained(out / settings.encoder)
    lm.save_pretrained(out / settings.lm)
    save_projector(projector, out / settings.projector)
    config = ModelConfig(
        name="gama",
        version="tiny-1",
        family="gama",
        runtime="torch",
        artifact=settings.lm,
        labels=TAG_LABELS,
        gama=settings,
    )
    write_model_config(out, config)
    return config
