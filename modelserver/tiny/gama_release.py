"""A tiny GAMA in the released layout: what a team downloads, at widths a CPU runs in seconds.

- `Llama-2-7b-chat-hf-qformer/`: `config.json`, LLaMA shards and a separate shard holding
  `model.Qformer.*`, `model.query_tokens`, `model.qformer_proj_norm.*` (with an index), and
  a LLaMA-style tokenizer.
- `checkpoint-2500/pytorch_model.bin`: the keys `Trainer._save` keeps under PEFT's
  `base_model.model.` prefix: the audio encoder, aggregator, Q-Former, projections and LoRA
  factors (r 8, on q_proj and v_proj, B non-zero so a broken merge shows).

The structure is the release's: 1024 x 128 input, 16 x 16 patches, 11 + 1 encoder blocks with
taps at 4 and 8, 32 queries, 64 aggregator tokens, and every tensor the release holds,
including those its forward ignores. The base directory's Q-Former differs from the stage
checkpoint's, so a converter that lets the wrong one win fails the reference test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from modelserver.families.gama import layout
from modelserver.families.gama.audio_model import AudioDims, BertDims, GamaAudio
from modelserver.families.gama.cavmae import EncoderDims
from modelserver.tiny.vocab import TAG_LABELS, build_word_tokenizer

BASE_DIR = "Llama-2-7b-chat-hf-qformer"
STAGE_DIR = "checkpoint-2500"
LORA_RANK = 8
QFORMER_IN_BASE = ("model.Qformer.", "model.query_tokens", "model.qformer_proj_norm.")


@dataclass(frozen=True)
class TinyRelease:
    base: Path
    stage: Path
    labels: Path


def tiny_dims(width: int, lm_width: int, qformer_layers: int) -> AudioDims:
    heads = width // 64
    return AudioDims(
        encoder=EncoderDims(
            width=width, heads=heads, mlp=4 * width, patch=16, grid=(8, 64), depth_a=11, depth_u=1
        ),
        aggregator=BertDims(width=width, heads=heads, intermediate=4 * width),
        qformer=BertDims(
            width=width,
            heads=heads,
            intermediate=4 * width,
            layers=qformer_layers,
            cross_every=2,
            encoder_width=width,
            queries=32,
        ),
        lm_width=lm_width,
    )


def released_only_shapes(dims: AudioDims) -> dict[str, tuple[int, ...]]:
    """Tensors the release holds and its forward never reads (layout.IGNORED)."""
    e, a = dims.encoder, dims.aggregator
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(e.depth_a):
        for norm in ("norm1_a", "norm2_a", "norm1_v", "norm2_v"):
            for p in ("weight", "bias"):
                shapes[f"model.audio_encoder.blocks_a.{i}.{norm}.{p}"] = (e.width,)
    for i in range(e.depth_u):
        for norm in ("norm1", "norm2", "norm1_v", "norm2_v"):
            for p in ("weight", "bias"):
                shapes[f"model.audio_encoder.blocks_u.{i}.{norm}.{p}"] = (e.width,)
    for tap in ("norm_j", "norm_k"):
        for p in ("weight", "bias"):
            shapes[f"model.audio_encoder.{tap}.{p}"] = (e.width,)
    for n in (1, 2):
        layer = f"model.audio_aggregator_layer_{n}"
        cross = f"{layer}.crossattention"
        shapes[f"{cross}.self.query.weight"] = (a.width, a.width)
        for m in ("key", "value"):
            shapes[f"{cross}.self.{m}.weight"] = (a.width, e.width)
        for m in ("query", "key", "value"):
            shapes[f"{cross}.self.{m}.bias"] = (a.width,)
        shapes[f"{cross}.output.dense.weight"] = (a.width, a.width)
        shapes[f"{cross}.output.dense.bias"] = (a.width,)
        shapes[f"{layer}.intermediate_query.dense.weight"] = (a.intermediate, a.width)
        shapes[f"{layer}.intermediate_query.dense.bias"] = (a.intermediate,)
        shapes[f"{layer}.output_query.dense.weight"] = (a.width, a.intermediate)
        for part in ("crossattention.output.LayerNorm", "output_query.LayerNorm"):
            for p in ("weight", "bias"):
                shapes[f"{layer}.{part}.{p}"] = (a.width,)
        shapes[f"{layer}.output_query.dense.bias"] = (a.width,)
    return shapes


def fill_values(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Deterministic values with O(1) activations: fan-in scaled matrices, norms near 1."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return noise / (shape[-1] ** 0.5) if "embed_tokens" not in name else noise
    if name.endswith("weight") and ("norm" in name.lower()):
        return 1.0 + 0.1 * noise
    return 0.02 * noise


def released_audio(dims: AudioDims, generator: torch.Generator) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        audio = GamaAudio(dims)
    shapes = {layout.released_audio_name(k): tuple(v.shape) for k, v in audio.state_dict().items()}
    shapes.update(released_only_shapes(dims))
    return {name: fill_values(name, shape, generator) for name, shape in sorted(shapes.items())}


def llama_config(
    vocab_size: int, width: int, mlp: int, layers: int, heads: int, positions: int,
    **extra: object,
) -> LlamaConfig:  # fmt: skip
    """Llama-2-7b-chat-hf's config.json at other sizes: LLaMA's special ids, no tied
    embeddings, one KV head per head."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_lm_config(vocab_size: int, width: int, heads: int) -> LlamaConfig:
    return llama_config(vocab_size, width, 2 * width, 2, heads, 1024)


def make_tiny_release(
    out: Path,
    seed: int,
    width: int = 128,
    lm_width: int = 128,
    lm_heads: int = 4,
    qformer_layers: int = 4,
) -> TinyRelease:
    """Widths are free (multiples of 64 for the audio path, whose heads are 64 wide); the
    structure is the release's."""
    base, stage_dir = out / BASE_DIR, out / STAGE_DIR
    base.mkdir(parents=True, exist_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_word_tokenizer(base)
    config = tiny_lm_config(len(tokenizer), lm_width, lm_heads)
    config.save_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        lm_shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    lm = {name: fill_values(name, shape, generator) for name, shape in sorted(lm_shapes.items())}
    dims = tiny_dims(width, config.hidden_size, qformer_layers)
    audio = released_audio(dims, generator)
    # The base directory's Q-Former: a first-stage value the stage checkpoint replaces.
    base_qformer = {
        k: fill_values(k, tuple(v.shape), generator)
        for k, v in audio.items()
        if k.startswith(QFORMER_IN_BASE)
    }
    base_qformer["model.Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    audio["model.Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    layers = sorted(lm)
    half = len(layers) // 2
    shards = [
        {k: lm[k] for k in layers[:half]},
        {k: lm[k] for k in layers[half:]},
        base_qformer,
    ]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in shard.items()}, str(base / name), {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )
    return write_stage(out, audio, lm_shapes, config.num_hidden_layers, generator)


def write_stage(
    out: Path,
    audio: dict[str, torch.Tensor],
    lm_shapes: dict[str, tuple[int, ...]],
    layers: int,
    generator: torch.Generator,
) -> TinyRelease:
    """The stage checkpoint (the audio path and LoRA factors under PEFT's prefix, as
    `Trainer._save` keeps them) and the labels file, beside the base directory."""
    stage = {layout.PEFT_PREFIX + k: v for k, v in audio.items()}
    for layer in range(layers):
        for target in layout.LORA_TARGETS:
            out_features, in_features = lm_shapes[f"model.layers.{layer}.self_attn.{target}.weight"]
            key = f"{layout.PEFT_PREFIX}model.layers.{layer}.self_attn.{target}"
            a = torch.randn(LORA_RANK, in_features, generator=generator) / in_features**0.5
            b = torch.randn(out_features, LORA_RANK, generator=generator) / LORA_RANK**0.5
            stage[f"{key}.lora_A.default.weight"] = a
            stage[f"{key}.lora_B.default.weight"] = 0.5 * b
    stage_dir = out / STAGE_DIR
    torch.save(stage, stage_dir / "pytorch_model.bin")
    labels = out / "labels.txt"
    labels.write_text("".join(f"{label}\n" for label in TAG_LABELS))
    return TinyRelease(base=out / BASE_DIR, stage=stage_dir, labels=labels)
