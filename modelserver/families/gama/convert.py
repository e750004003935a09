"""`modelserver export --family gama`: the released checkpoint into a served model directory.

Inputs, as GAMA's authors publish them: a base directory (`Llama-2-7b-chat-hf-qformer`: HF
LLaMA shards, a shard with the Q-Former, `config.json`, the tokenizer) and a stage checkpoint
(`checkpoint-N/pytorch_model.bin`: the audio path, the Q-Former and the LoRA factors under
PEFT's `base_model.model.`). The release loads them with `from_pretrained(base)`,
`get_peft_model`, `load_state_dict(stage, strict=False)`: where both hold a tensor the stage's
wins, and a missing one silently stays random. Here every key is used or named on the ignore
list, and a missing key or a wrong shape stops the export, naming the key.

Output: `audio.safetensors` (the audio path, served names), `lm/` (LLaMA with LoRA merged as
W + (alpha / r) B A, written shard by shard so the 7B model is never held twice), `tokenizer/`
and `model.yaml`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from modelserver.config import (
    ContinuousBatching,
    GamaGeneration,
    GamaSettings,
    ModelConfig,
    write_model_config,
)
from modelserver.families.gama import layout
from modelserver.families.gama.audio_model import DimsError, GamaAudio, derive_dims
from modelserver.families.gama.tensorfiles import TensorFile, shard_files

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


class CheckpointError(ValueError):
    """The inputs are not a complete GAMA release; the message names the key or file."""


@dataclass
class Inventory:
    """Which file holds each tensor, by its served name."""

    audio: dict[str, tuple[TensorFile, str]] = field(default_factory=dict)
    staged: set[str] = field(default_factory=set)
    """Audio tensors the stage checkpoint holds (`Trainer._save` keeps all of them)."""
    lm: dict[str, tuple[TensorFile, str]] = field(default_factory=dict)
    lora: dict[str, dict[str, tuple[TensorFile, str]]] = field(default_factory=dict)
    ignored: Counter[str] = field(default_factory=Counter)
    superseded: int = 0


def stage_file(checkpoint: Path) -> Path:
    if checkpoint.is_file():
        return checkpoint
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (checkpoint / name).is_file():
            return checkpoint / name
    raise CheckpointError(
        f"{checkpoint}: no pytorch_model.bin (a GAMA stage checkpoint is a checkpoint-N "
        "directory or its pytorch_model.bin)"
    )


def _take(inventory: Inventory, source: TensorFile, key: str, from_stage: bool) -> None:
    placed = layout.place(key)
    if placed is None:
        raise CheckpointError(
            f"{source.path}: unexpected key {key}: not part of GAMA's released layout "
            "(is this a checkpoint of another model?)"
        )
    if placed.kind == "ignored":
        inventory.ignored[placed.name] += 1
        return
    if placed.kind == "lora":
        if not from_stage:
            raise CheckpointError(
                f"{source.path}: LoRA factor {key} belongs in the stage checkpoint"
            )
        inventory.lora.setdefault(placed.name, {})[placed.part] = (source, key)
        return
    table = inventory.audio if placed.kind == "audio" else inventory.lm
    if placed.name in table:
        if not from_stage:
            raise CheckpointError(f"{source.path}: {key} appears twice in the base directory")
        inventory.superseded += 1  # the stage checkpoint's value wins, as in the release
    if from_stage and placed.kind == "audio":
        inventory.staged.add(placed.name)
    table[placed.name] = (source, key)


def read_inventory(stage: Path, base: Path) -> tuple[Inventory, LlamaConfig]:
    config_path = base / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{base}: no config.json (the base directory is a LLaMA model)")
    raw = json.loads(config_path.read_text())
    if raw.get("model_type") != "llama":
        raise CheckpointError(
            f"{config_path}: model_type is {raw.get('model_type')!r}; GAMA's base is LLaMA"
        )
    lm_config = LlamaConfig.from_pretrained(base)
    inventory = Inventory()
    shards = shard_files(base)
    if not shards:
        raise CheckpointError(f"{base}: no weight files (*.safetensors or pytorch_model*.bin)")
    for path in shards:
        source = TensorFile(path)
        for key in source.names:
            _take(inventory, source, key, from_stage=False)
    staged = TensorFile(stage_file(stage))
    if not any(layout.unwrap(k).startswith("model.audio_encoder.") for k in staged.names):
        sample = ", ".join(staged.names[:3]) or "none"
        raise CheckpointError(
            f"{staged.path}: no audio_encoder weights, so not a GAMA stage checkpoint "
            f"(its first keys: {sample})"
        )
    for key in staged.names:
        _take(inventory, staged, key, from_stage=True)
    return inventory, lm_config


def _expect(
    have: dict[str, tuple[TensorFile, str]], want: dict[str, torch.Size], what: str
) -> None:
    for name, shape in want.items():
        if name not in have:
            released = layout.released_audio_name(name) if what == "audio" else name
            raise CheckpointError(f"missing key {released} ({what}, shape {tuple(shape)})")
        source, key = have[name]
        if source.shape(key) != tuple(shape):
            raise CheckpointError(
                f"{source.path}: {key} has shape {source.shape(key)}; expected {tuple(shape)}"
            )


def check(inventory: Inventory, lm_config: LlamaConfig, settings: GamaSettings) -> GamaAudio:
    """Every tensor the served model needs is present with its shape; returns the audio
    module on the meta device, built from the dimensions the weights give."""
    shapes = {name: src.shape(key) for name, (src, key) in inventory.audio.items()}
    try:
        dims = derive_dims(shapes, settings.num_mel_bins, settings.max_frames, settings.head_width)
    except DimsError as exc:
        if exc.key:
            raise CheckpointError(f"missing key {layout.released_audio_name(exc.key)}") from exc
        raise CheckpointError(f"the audio path does not fit GAMA's: {exc}") from exc
    if dims.lm_width != lm_config.hidden_size:
        raise CheckpointError(
            f"audio_proj_qformer maps to width {dims.lm_width}; the LLM's hidden_size is "
            f"{lm_config.hidden_size}"
        )
    with torch.device("meta"):
        audio = GamaAudio(dims)
        lm = LlamaForCausalLM(lm_config)
    _check_audio(inventory, {k: v.shape for k, v in audio.state_dict().items()})
    want_lm = {k: v.shape for k, v in lm.state_dict().items()}
    if lm_config.tie_word_embeddings:
        want_lm.pop("lm_head.weight", None)
    _expect(inventory.lm, want_lm, "LLM")
    _check_lora(inventory, lm_config.num_hidden_layers, want_lm)
    return audio


def _check_audio(inventory: Inventory, want: dict[str, Any]) -> None:
    _expect(inventory.audio, want, "audio")
    # The base directory's Q-Former predates training; a stage checkpoint always carries the
    # trained one (its name matches `Trainer._save`'s filter), so one without it is damaged.
    unstaged = sorted(set(want) - inventory.staged)
    if unstaged:
        raise CheckpointError(
            f"missing key {layout.PEFT_PREFIX}{layout.released_audio_name(unstaged[0])} in the "
            "stage checkpoint (the base directory's copy is from before training)"
        )
    extra = sorted(set(inventory.audio) - set(want))
    if extra:
        raise CheckpointError(f"unexpected key {layout.released_audio_name(extra[0])}")


def _check_lora(inventory: Inventory, layers: int, want_lm: dict[str, Any]) -> None:
    """Both LoRA factors of every adapted projection, shaped to adapt its weight."""
    for layer in range(layers):
        for target in layout.LORA_TARGETS:
            name = f"model.layers.{layer}.self_attn.{target}.weight"
            factors = inventory.lora.get(name, {})
            missing = [part for part in "AB" if part not in factors]
            if missing:
                raise CheckpointError(
                    f"missing key {layout.PEFT_PREFIX}{name[: -len('.weight')]}"
                    f".lora_{missing[0]}.default.weight"
                )
            (a_src, a_key), (b_src, b_key) = factors["A"], factors["B"]
            out_features, in_features = want_lm[name]
            rank = a_src.shape(a_key)[0]
            if a_src.shape(a_key) != (rank, in_features) or b_src.shape(b_key) != (
                out_features,
                rank,
            ):
                raise CheckpointError(
                    f"{b_key}: LoRA factors {a_src.shape(a_key)} and {b_src.shape(b_key)} "
                    f"do not adapt a {(out_features, in_features)} weight"
                )
    unexpected = sorted(set(inventory.lora) - set(want_lm))
    if unexpected:
        raise CheckpointError(f"LoRA factors for {unexpected[0]}, which the LLM does not have")


def lora_alpha(stage: Path) -> float:
    """The release's LoraConfig (alpha 16) unless the checkpoint carries an adapter config."""
    directory = stage if stage.is_dir() else stage.parent
    adapter = directory / "adapter_config.json"
    if adapter.is_file():
        return float(json.loads(adapter.read_text())["lora_alpha"])
    return float(layout.RELEASED_LORA_ALPHA)


def _merge(
    weight: torch.Tensor, factors: dict[str, tuple[TensorFile, str]], alpha: float
) -> torch.Tensor:
    a = factors["A"][0].get(factors["A"][1]).float()
    b = factors["B"][0].get(factors["B"][1]).float()
    merged = weight.float() + (alpha / a.shape[0]) * (b @ a)
    return merged.to(weight.dtype)


SHARD_BYTES = 2 * 1024**3
"""Output shards stay under this: safetensors serialises a shard in memory before writing."""


def write_lm(
    inventory: Inventory,
    base: Path,
    out: Path,
    alpha: float,
    progress: Callable[[int], object] = lambda nbytes: None,
) -> int:
    """The LLM shard by shard (inputs memory-mapped, outputs under SHARD_BYTES); returns how
    many weights took a LoRA merge. `progress` hears the bytes of each tensor written."""
    out.mkdir(parents=True, exist_ok=True)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, (source, _) in inventory.lm.items():
        by_file[source.path].append(name)
    shards: list[list[str]] = [[]]
    size = 0
    for path in sorted(by_file):
        for name in by_file[path]:
            source, key = inventory.lm[name]
            nbytes = source.nbytes(key)
            if shards[-1] and size + nbytes > SHARD_BYTES:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
    weight_map: dict[str, str] = {}
    merged = 0
    for i, names in enumerate(shards, start=1):
        shard_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            source, key = inventory.lm[name]
            tensor = source.get(key)
            if name in inventory.lora:
                tensor = _merge(tensor, inventory.lora[name], alpha)
                merged += 1
            tensors[name] = tensor.contiguous()
            weight_map[name] = shard_name
            progress(source.nbytes(key))
        save_file(tensors, str(out / shard_name), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name in ("config.json", "generation_config.json"):
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    return merged


def write_tokenizer(base: Path, out: Path) -> None:
    found = [name for name in TOKENIZER_FILES if (base / name).is_file()]
    if not any(name in found for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{base}: no tokenizer (tokenizer.model or tokenizer.json)")
    out.mkdir(parents=True, exist_ok=True)
    for name in found:
        shutil.copy2(base / name, out / name)


def export_gama(
    checkpoint: Path,
    base_model: Path,
    out: Path,
    name: str = "gama",
    version: str = "1",
    labels: list[str] | None = None,
    generation: GamaGeneration | None = None,
    progress: bool = False,
) -> ModelConfig:
    """Convert the release; with `progress`, a bar on stderr over the LLM's bytes (tqdm: off
    by itself when stderr is not a terminal)."""
    settings = GamaSettings(generation=generation or GamaGeneration())
    inventory, lm_config = read_inventory(checkpoint, base_model)
    audio = check(inventory, lm_config, settings)
    for reason, count in sorted(inventory.ignored.items()):
        log.info("ignored %d tensors: %s", count, reason)
    if inventory.superseded:
        log.info(
            "%d base-directory tensors superseded by the stage checkpoint", inventory.superseded
        )
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: inventory.audio[k][0].get(inventory.audio[k][1]).contiguous() for k in audio.state_dict()
    }
    save_file(tensors, str(out / settings.audio), metadata={"format": "pt"})
    alpha = lora_alpha(checkpoint)
    from tqdm import tqdm

    total = sum(source.nbytes(key) for source, key in inventory.lm.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="export lm", file=sys.stderr,
              disable=None if progress else True) as bar:  # fmt: skip
        merged = write_lm(inventory, base_model, out / settings.lm, alpha, bar.update)
    log.info("merged LoRA into %d LLM weights (alpha %g)", merged, alpha)
    write_tokenizer(base_model, out / settings.tokenizer)
    config = ModelConfig(
        name=name,
        version=version,
        family="gama",
        runtime="torch",
        artifact=settings.lm,
        labels=labels or [],
        downmix="first",
        # Planned from the memory of the machine that serves it (modelserver/plan.py).
        continuous_batching=ContinuousBatching(kv_budget_tokens="auto"),
        gama=settings,
    )
    write_model_config(out, config)
    return config
