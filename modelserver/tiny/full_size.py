"""Rehearsal models: random weights at the real sizes, in the released layouts.

No GPU and no download is needed to find out what a full-size model does to memory, disk and
start time: these are GAMA (LLaMA-2-7B, or a 1.1B LLaMA for a short GPU budget, with the
released audio path at its real width) and wav2vec2-base, written the way their authors
publish them. Tensors are drawn and written one at a time (`write_streamed`), so making a
13 GB release never holds more than its largest tensor in memory. Values are deterministic
per tensor name and scaled like the tiny models' (fan-in), so activations stay O(1).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modelserver.tiny.gama_release import (
    BASE_DIR,
    QFORMER_IN_BASE,
    STAGE_DIR,
    TinyRelease,
    fill_values,
    llama_config,
    released_audio,
    tiny_dims,
    write_stage,
)
from modelserver.tiny.vocab import SEED, build_word_tokenizer
from modelserver.tiny.wav2vec2 import ctc_config, save_ctc_checkpoint

# HF's `save_pretrained(max_shard_size="10GB")`, as Llama-2-7b-chat-hf is published.
MAX_SHARD_BYTES = 10 * 10**9
TensorSpec = tuple[str, tuple[int, ...], torch.dtype]
"""A tensor's name, shape and stored dtype."""
_SAFETENSORS_DTYPE = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}


@dataclass(frozen=True)
class LlamaSize:
    hidden: int
    layers: int
    heads: int
    mlp: int
    vocab: int = 32000
    audio_width: int = 768
    """The audio path's width (CAV-MAE, aggregator, Q-Former): 768 as released."""
    qformer_layers: int = 12


# 7b is LLaMA-2-7B, GAMA's LLM; 1b has TinyLlama-1.1B's shape (22 layers, 2048 wide), for a
# GPU check that must fit a short budget. The audio path is the release's in both. tiny runs
# the rehearsal's own code path in seconds (its test), with LLaMA's vocabulary.
GAMA_SIZES = {
    "7b": LlamaSize(hidden=4096, layers=32, heads=32, mlp=11008),
    "1b": LlamaSize(hidden=2048, layers=22, heads=16, mlp=5632),
    "tiny": LlamaSize(hidden=128, layers=2, heads=4, mlp=256, audio_width=128, qformer_layers=2),
}


def release_config(size: LlamaSize) -> LlamaConfig:
    """Llama-2-7b-chat-hf's config.json, at `size`, with its float16 weights."""
    return llama_config(size.vocab, size.hidden, size.mlp, size.layers, size.heads, 4096,
                        torch_dtype="float16")  # fmt: skip


def _drawn(seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor `name`, the same whichever file or order it is written in."""
    generator = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    return fill_values(name, shape, generator)


def write_streamed(
    path: Path,
    tensors: Iterable[TensorSpec],
    make: Callable[[str, tuple[int, ...]], torch.Tensor],
    progress: Callable[[int], object] = lambda nbytes: None,
) -> dict[str, int]:
    """A safetensors file written tensor by tensor: the header first (it needs only shapes),
    then each tensor as `make` draws it. Returns each tensor's size in bytes."""
    specs = list(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    sizes: dict[str, int] = {}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        sizes[name] = nbytes
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape, dtype in specs:
            tensor = make(name, shape).to(dtype).contiguous()
            assert tuple(tensor.shape) == shape, name
            f.write(tensor.view(torch.uint8).reshape(-1).numpy().data)
            progress(sizes[name])
    return sizes


def _shards(specs: Sequence[TensorSpec], limit: int) -> list[list[TensorSpec]]:
    """Consecutive tensors up to `limit` bytes a shard, as `save_pretrained` splits them."""
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * torch.empty((), dtype=spec[2]).element_size()
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += nbytes
    return shards


def gama_release_bytes(size: str) -> int:
    """What `make_gama_release` writes for the LLM (float16), for a progress bar's total."""
    config = release_config(GAMA_SIZES[size])
    with torch.device("meta"):
        return sum(2 * v.numel() for v in LlamaForCausalLM(config).state_dict().values())


def make_gama_release(
    out: Path,
    size: str = "7b",
    seed: int = SEED,
    progress: Callable[[int], object] = lambda nbytes: None,
) -> TinyRelease:
    """GAMA's release at full size: the base directory (LLaMA float16 shards, the Q-Former
    shard, index, config, tokenizer) and the stage checkpoint (audio path, Q-Former, LoRA)."""
    base, stage_dir = out / BASE_DIR, out / STAGE_DIR
    base.mkdir(parents=True, exist_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    chosen = GAMA_SIZES[size]
    config = release_config(chosen)
    build_word_tokenizer(base, size=config.vocab_size)
    config.save_pretrained(base)
    with torch.device("meta"):
        lm_shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    lm_specs = [(k, shape, torch.float16) for k, shape in lm_shapes.items()]
    generator = torch.Generator().manual_seed(seed)
    dims = tiny_dims(chosen.audio_width, config.hidden_size, chosen.qformer_layers)
    audio = released_audio(dims, generator)  # about 1 GB in float32, as the stage holds it
    in_base = [k for k in audio if k.startswith(QFORMER_IN_BASE)]
    qformer_specs = [(k, tuple(audio[k].shape), torch.float16) for k in in_base]
    qformer_specs.append(("model.Qformer.bert.embeddings.position_ids", (1, 512), torch.int64))
    audio["model.Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    shards = [*_shards(lm_specs, MAX_SHARD_BYTES), qformer_specs]

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name.endswith("position_ids"):
            return torch.arange(shape[-1]).reshape(shape)
        # The base directory's Q-Former is a first-stage value the stage checkpoint replaces.
        return _drawn(seed + 1 if name.startswith(QFORMER_IN_BASE) else seed, name, shape)

    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        sizes = write_streamed(
            base / name, shard, make, progress if shard is not qformer_specs else lambda n: None
        )
        weight_map.update(dict.fromkeys(sizes, name))
        total += sum(sizes.values())
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return write_stage(out, audio, lm_shapes, config.num_hidden_layers, generator)


def make_wav2vec2_base(out: Path, seed: int = SEED) -> Path:
    """wav2vec2-base for CTC at its real size (768 wide, 12 layers, the group-norm conv
    feature encoder: 95M parameters), saved as facebook/wav2vec2-base-960h is published."""
    return save_ctc_checkpoint(
        ctc_config(feat_extract_norm="group", do_stable_layer_norm=False), out, seed
    )
