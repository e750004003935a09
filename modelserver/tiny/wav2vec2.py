"""A tiny Wav2Vec2 CTC checkpoint, and that checkpoint exported and served."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

from modelserver.config import ModelConfig, write_model_config
from modelserver.tiny.vocab import CTC_ALPHABET, CTC_SPECIALS, SEED


def build_ctc_checkpoint(out: Path, seed: int = SEED, group_norm: bool = False) -> Path:
    """A 2-layer, 64-wide Wav2Vec2ForCTC with its tokenizer, saved with `save_pretrained`.

    The default is the stable-layer-norm layout (wav2vec2-large-lv60); `group_norm` gives the
    wav2vec2-base layout, whose feature encoder is run without an attention mask.
    """
    config = ctc_config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        feat_extract_norm="group" if group_norm else "layer",
        do_stable_layer_norm=not group_norm,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return save_ctc_checkpoint(config, out, seed)


def ctc_config(**sizes: object) -> Wav2Vec2Config:
    """Wav2Vec2Config's defaults (wav2vec2-base) with the CTC vocabulary, changed by `sizes`."""
    vocab = CTC_SPECIALS + CTC_ALPHABET
    return Wav2Vec2Config(
        vocab_size=len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2, **sizes
    )


def save_ctc_checkpoint(config: Wav2Vec2Config, out: Path, seed: int = SEED) -> Path:
    """Random Wav2Vec2ForCTC weights for `config`, with its tokenizer, as HF publishes them."""
    vocab = CTC_SPECIALS + CTC_ALPHABET
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
        Wav2Vec2CTCTokenizer(str(vocab_file)).save_pretrained(out)
    return out


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
