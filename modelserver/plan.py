"""Memory planned before anything is loaded: what the weights take at the compute dtype (read
from the safetensors headers, never by loading them), what the device can give, and what is
left for the KV cache (vLLM's `gpu_memory_utilization`). `modelserver serve` refuses a model
that cannot fit, in seconds and with the numbers, instead of being killed for memory halfway
through loading; `modelserver plan` prints the same arithmetic."""

from __future__ import annotations

import json
import platform
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from modelserver.config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# safetensors' floating types: stored in their own width, computed in the chosen dtype.
_FLOATING = {"F64", "F32", "F16", "BF16"}
_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                 "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip
# Positions an activation reserve is sized for: a prefill of the audio tokens and a prompt.
RESERVE_POSITIONS = 512
GiB = 1024**3


class PlanError(ValueError):
    """The model cannot be served as configured; the message names what to change."""


def cpu_has_native_bf16() -> bool:
    """bfloat16 matrix products in hardware: AVX512-BF16 or AMX on x86, FEAT_BF16 on Arm
    (Apple M2 and later). Elsewhere torch emulates them, several times slower than float32."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                                 capture_output=True, text=True, timeout=5)  # fmt: skip
        except OSError:
            return False
        return out.stdout.strip() == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")) or (
        platform.machine() == "aarch64" and " bf16" in flags
    )


def compute_dtype(
    config: ModelConfig,
    device: str,
    native_bf16: bool | None = None,
    emulated_bf16: bool = False,
) -> str:
    """The dtype the model computes in on `device` ("cpu" or "cuda"): `auto` is bfloat16 on
    CUDA (as GAMA was trained) and float32 on the CPU; bfloat16 on a CPU needs native support
    unless `emulated_bf16` accepts the slowdown for half the memory; float16 on a CPU is
    refused (torch runs it slowly, and some kernels not at all)."""
    wanted = config.dtype
    if wanted == "auto":
        return "bfloat16" if device == "cuda" and config.family == "gama" else "float32"
    if device != "cuda" and wanted == "float16":
        raise PlanError("dtype float16 runs on CUDA only; on the CPU use float32 (or bfloat16 "
                        "where the CPU has it natively)")  # fmt: skip
    if device != "cuda" and wanted == "bfloat16":
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        if not native and not emulated_bf16:
            raise PlanError(
                "dtype bfloat16 on the CPU needs native support (AVX512-BF16 or AMX on x86, "
                "FEAT_BF16 on Arm), which this CPU lacks: torch would emulate it, several "
                "times slower than float32; use --dtype float32, or --emulated-bfloat16 to "
                "take the slowdown for half the memory"
            )
    return wanted


def _header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header: dict[str, dict[str, object]] = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def weights_bytes(files: list[Path], dtype: str) -> int:
    """What the tensors of these safetensors files take in memory, floating ones at `dtype`."""
    total = 0
    for path in files:
        for tensor in _header(path).values():
            numel = 1
            for n in tensor["shape"]:  # type: ignore[attr-defined]
                numel *= int(n)
            kind = str(tensor["dtype"])
            total += numel * (DTYPE_BYTES[dtype] if kind in _FLOATING else _STORED_BYTES[kind])
    return total


def weight_files(model_dir: Path, config: ModelConfig) -> list[Path]:
    if config.family == "gama":
        assert config.gama is not None
        lm = model_dir / config.gama.lm
        return [model_dir / config.gama.audio, *sorted(lm.glob("*.safetensors"))]
    artifact = model_dir / config.artifact
    return sorted(artifact.glob("*.safetensors")) if artifact.is_dir() else []


def kv_bytes_per_token(model_dir: Path, config: ModelConfig, dtype: str) -> int:
    """Keys and values of every layer for one position (GAMA's LLaMA, from its config.json);
    0 for a model that does not generate."""
    if config.family != "gama" or config.gama is None:
        return 0
    c = json.loads((model_dir / config.gama.lm / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    return int(2 * c["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype])


def _activation_reserve(model_dir: Path, config: ModelConfig) -> int:
    """An estimate, not a measurement: one step's prefills at RESERVE_POSITIONS positions each,
    with float32 logits over the vocabulary and a few hidden-width buffers per position."""
    if config.family != "gama" or config.gama is None:
        return 0
    c = json.loads((model_dir / config.gama.lm / "config.json").read_text())
    per_position = 4 * c["vocab_size"] + 16 * c["hidden_size"]
    return int(config.continuous_batching.max_prefill_per_step * RESERVE_POSITIONS * per_position)


def available_bytes(device: str) -> int:
    """What a new allocation can get: CUDA's free memory; on the CPU, the available RAM or
    what the cgroup (a container's memory limit) still allows, whichever is lower."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    available = int(psutil.virtual_memory().available)
    cgroup = _cgroup_room()
    return available if cgroup is None else min(available, cgroup)


def _cgroup_room() -> int | None:
    root = Path("/sys/fs/cgroup")
    v1 = ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")
    for limit, usage in (("memory.max", "memory.current"), v1):
        try:
            cap = (root / limit).read_text().strip()
            used = int((root / usage).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:  # v1 writes a huge number for "no limit"
            return max(int(cap) - used, 0)
    return None


def size(n: int) -> str:
    """Bytes as a person reads them: GiB from 1 GiB on, MiB below."""
    return f"{n / GiB:9.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:9.2f} MiB"


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    dtype: str
    weights_bytes: int
    available_bytes: int
    memory_fraction: float
    reserve_bytes: int
    kv_bytes_per_token: int
    kv_budget_tokens: int
    """The budget in force: planned (`auto`) or the configured number."""
    planned: bool

    @property
    def kv_room_bytes(self) -> int:
        usable = int(self.available_bytes * self.memory_fraction)
        return usable - self.weights_bytes - self.reserve_bytes

    def lines(self) -> list[str]:
        room = self.kv_room_bytes
        out = [
            f"device {self.device}, dtype {self.dtype}",
            f"weights           {size(self.weights_bytes)} (safetensors headers)",
            f"available         {size(self.available_bytes)}",
            f"x memory_fraction {self.memory_fraction:9.2f}",
            f"- reserve         {size(self.reserve_bytes)} (activations, estimated)",
            f"= KV cache room   {size(room)}",
        ]
        if self.kv_bytes_per_token:
            per = self.kv_bytes_per_token
            out += [
                f"KV per token      {per / 2**20:9.4f} MiB",
                f"kv_budget_tokens  {self.kv_budget_tokens:9d} "
                f"({'planned' if self.planned else 'configured'})",
                f"1,000-token sequences at once: {self.kv_budget_tokens // 1000}",
            ]
        return out


def plan(
    model_dir: Path,
    config: ModelConfig,
    device: str,
    available: int | None = None,
    native_bf16: bool | None = None,
    emulated_bf16: bool = False,
) -> MemoryPlan:
    """The plan for serving `model_dir` on `device` ("cpu" or "cuda"), or PlanError saying
    why it cannot be served: the weights do not fit, or the configured KV budget does not."""
    dtype = compute_dtype(config, device, native_bf16, emulated_bf16)
    weights = weights_bytes(weight_files(model_dir, config), dtype)
    have = available_bytes(device) if available is None else available
    per_token = kv_bytes_per_token(model_dir, config, dtype)
    cb = config.continuous_batching
    draft = MemoryPlan(device, dtype, weights, have, cb.memory_fraction,
                       _activation_reserve(model_dir, config), per_token, 0, False)  # fmt: skip
    room = draft.kv_room_bytes
    if weights > have * cb.memory_fraction:
        smaller = {k: weights_bytes(weight_files(model_dir, config), k) for k in ("bfloat16",)}
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        flags = "--dtype bfloat16" + ("" if device == "cuda" or native else " --emulated-bfloat16")
        hint = (
            f"; {flags} needs {size(smaller['bfloat16']).strip()}"
            if dtype == "float32" and config.family == "gama"
            else ""
        )
        raise PlanError(
            f"model {config.name}: the weights need {size(weights).strip()} at {dtype} and "
            f"{device} has {size(have).strip()} available (x memory_fraction "
            f"{cb.memory_fraction:g}){hint}; or serve it on a larger machine"
        )
    if not per_token:
        return draft
    if cb.kv_budget_tokens == "auto":
        budget = max(room, 0) // per_token
        if budget < 1:
            raise PlanError(
                f"model {config.name}: the weights ({weights / GiB:.2f} GiB at {dtype}) leave "
                f"no room for a KV cache in {have / GiB:.2f} GiB; lower the dtype or use a "
                "larger machine"
            )
        return MemoryPlan(**{**draft.__dict__, "kv_budget_tokens": budget, "planned": True})
    if cb.kv_budget_tokens * per_token > max(room, 0):
        fits = max(room, 0) // per_token
        raise PlanError(
            f"continuous_batching.kv_budget_tokens: {cb.kv_budget_tokens} tokens need "
            f"{cb.kv_budget_tokens * per_token / GiB:.2f} GiB of KV cache and the plan leaves "
            f"{max(room, 0) / GiB:.2f} GiB; set it to {fits} or less, or to auto"
        )
    return MemoryPlan(**{**draft.__dict__, "kv_budget_tokens": cb.kv_budget_tokens})
