"""Memory planned before loading (modelserver/plan.py): the weights' bytes from the safetensors
headers against an independent count, LLaMA-2-7B's arithmetic on a header-only model in the
released layout, the dtype rules, the KV budget, and refusals that come in seconds."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from modelserver.audio import Audio
from modelserver.config import ModelConfig, Task, load_model_config
from modelserver.messages import AudioPayload, InferRequest
from modelserver.plan import (
    GiB,
    PlanError,
    _activation_reserve,
    compute_dtype,
    cpu_has_native_bf16,
    kv_bytes_per_token,
    plan,
    weight_files,
    weights_bytes,
)
from tests.modelserver.conftest import live_server
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs, params

MODELSERVER = str(Path(sys.executable).with_name("modelserver"))
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "torch_dtype": "float16",
}  # fmt: skip


def _gama(tiny_models: Path, **changes: object) -> ModelConfig:
    return load_model_config(tiny_models / "gama").model_copy(update=changes)


def test_weights_are_counted_from_the_headers(tiny_models: Path) -> None:
    config = _gama(tiny_models)
    files = weight_files(tiny_models / "gama", config)
    loaded = [a for f in files for a in load_file(str(f)).values()]
    floating = sum(a.size for a in loaded if np.issubdtype(a.dtype, np.floating))
    other = sum(a.nbytes for a in loaded if not np.issubdtype(a.dtype, np.floating))
    assert weights_bytes(files, "float32") == 4 * floating + other
    assert weights_bytes(files, "bfloat16") == 2 * floating + other


def _header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A safetensors file with the header of these float16 tensors and no data: all a plan
    reads (it never loads weights)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _llama_7b_release(tiny_models: Path, out: Path) -> ModelConfig:
    """The tiny GAMA's model directory with LLaMA-2-7B's config and tensor shapes in its lm/."""
    (out / "lm").mkdir(parents=True)
    (out / "lm" / "config.json").write_text(json.dumps(LLAMA_2_7B))
    h, m, v = 4096, 11008, 32000
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)
    }  # fmt: skip
    for i in range(32):
        p = f"model.layers.{i}."
        shapes |= {p + f"self_attn.{x}_proj.weight": (h, h) for x in "qkvo"}
        shapes |= {p + "mlp.gate_proj.weight": (m, h), p + "mlp.up_proj.weight": (m, h),
                   p + "mlp.down_proj.weight": (h, m), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}  # fmt: skip
    _header_only(out / "lm" / "model-00001-of-00001.safetensors", shapes)
    (out / "audio.safetensors").write_bytes(
        (tiny_models / "gama" / "audio.safetensors").read_bytes()
    )
    return _gama(tiny_models)


def test_llama_2_7b_arithmetic(tiny_models: Path, tmp_path: Path) -> None:
    config = _llama_7b_release(tiny_models, tmp_path)
    audio = weights_bytes([tmp_path / "audio.safetensors"], "bfloat16")
    params_7b = 32000 * 4096 * 2 + 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096)
    assert params_7b == 6_738_415_616  # LLaMA-2-7B's published count
    got = plan(tmp_path, config, "cuda", available=80 * GiB)
    assert got.dtype == "bfloat16" and got.weights_bytes == 2 * params_7b + audio
    assert kv_bytes_per_token(tmp_path, config, "bfloat16") == 2 * 32 * 32 * 128 * 2  # 0.5 MiB
    room = int(80 * GiB * 0.9) - got.weights_bytes - _activation_reserve(tmp_path, config)
    # A configured budget is checked, not replaced; `auto` takes what the room holds.
    budget = config.continuous_batching.model_copy(update={"kv_budget_tokens": "auto"})
    auto = plan(tmp_path, _gama(tiny_models, continuous_batching=budget), "cuda", 80 * GiB)
    assert auto.planned and auto.kv_budget_tokens == room // (512 * 1024)
    assert 100_000 < auto.kv_budget_tokens < 130_000  # about 118 sequences of 1,000 tokens
    # float32 on this 24 GiB machine: refused, naming what would fit.
    f32 = _gama(tiny_models, dtype="float32")
    with pytest.raises(
        PlanError, match=r"need 25\.\d\d GiB at float32 .* --dtype bfloat16 needs 12"
    ):
        plan(tmp_path, f32, "cpu", available=22 * GiB, native_bf16=True)
    # Without native bfloat16 the hint names the flag that allows it.
    with pytest.raises(PlanError, match=r"--dtype bfloat16 --emulated-bfloat16 needs 12"):
        plan(tmp_path, f32, "cpu", available=22 * GiB, native_bf16=False)


def test_dtype_rules(tiny_models: Path) -> None:
    config = _gama(tiny_models)
    assert compute_dtype(config, "cpu") == "float32"
    assert compute_dtype(config, "cuda") == "bfloat16"
    bf16 = _gama(tiny_models, dtype="bfloat16")
    assert compute_dtype(bf16, "cpu", native_bf16=True) == "bfloat16"
    with pytest.raises(PlanError, match=r"needs native support.*--emulated-bfloat16"):
        compute_dtype(bf16, "cpu", native_bf16=False)
    assert compute_dtype(bf16, "cpu", native_bf16=False, emulated_bf16=True) == "bfloat16"
    with pytest.raises(PlanError, match="float16 runs on CUDA only"):
        compute_dtype(_gama(tiny_models, dtype="float16"), "cpu")


def test_a_configured_budget_that_does_not_fit_is_refused(tiny_models: Path) -> None:
    config = _gama(tiny_models)
    budget = config.continuous_batching.model_copy(update={"kv_budget_tokens": 10**9})
    with pytest.raises(PlanError, match=r"kv_budget_tokens: 1000000000 tokens need .* or to auto"):
        plan(tiny_models / "gama", _gama(tiny_models, continuous_batching=budget), "cpu")


def test_the_old_cuda_dtype_field(tmp_path: Path, tiny_models: Path) -> None:
    raw = yaml.safe_load((tiny_models / "gama" / "model.yaml").read_text())
    raw["gama"]["cuda_dtype"] = "bfloat16"  # what exports wrote: still loads, as auto
    assert ModelConfig.model_validate(raw).dtype == "auto"
    raw["gama"]["cuda_dtype"] = "float16"
    with pytest.raises(ValueError, match="moved to the top-level `dtype`"):
        ModelConfig.model_validate(raw)


async def test_the_served_budget_is_the_planned_one(tiny_models: Path) -> None:
    async with live_server(
        tiny_models / "gama", continuous_batching={"kv_budget_tokens": "auto"}
    ) as live:
        assert live.core.plan is not None and live.core.plan.planned
        assert live.core.scheduler is not None
        assert live.core.scheduler.kv_budget == live.core.plan.kv_budget_tokens > 16384
        meta = await live.stub.ModelMetadata(_metadata_request())
        assert params(meta)["kv_budget_tokens"] == live.core.plan.kv_budget_tokens


def _metadata_request() -> object:
    from gamaserving.inference import grpc_predict_v2_pb2 as pb

    return pb.ModelMetadataRequest(name="gama")


def test_serve_refuses_in_seconds_with_one_line(tiny_models: Path) -> None:
    done = subprocess.run(
        [MODELSERVER, "serve", "--model-dir", str(tiny_models / "gama"), "--port", "0",
         "--device", "cpu", "--device-memory", "1MiB"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("modelserver:")]
    assert "the weights need" in line and "cpu has 1.00 MiB available" in line, line
    # Refused by the plan, before anything was loaded.
    assert "loaded gama" not in done.stderr and "memory plan" not in done.stderr
    # ... and the process stopped listening cleanly: nothing after the line but the log.
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    plan_cli = subprocess.run(
        [MODELSERVER, "plan", "--model-dir", str(tiny_models / "gama"), "--device-memory",
         "2GiB"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plan_cli.returncode == 0 and "available              2.00 GiB" in plan_cli.stdout


async def test_bfloat16_is_served_on_any_cpu_when_asked(tiny_models: Path) -> None:
    """Emulated where the CPU lacks it (how the 7B rehearsal fits 24 GiB); refused without
    the flag there."""
    emulated = {"dtype": "bfloat16", "emulated_bfloat16": True}
    async with live_server(tiny_models / "gama", settings=emulated) as live:
        meta = await live.stub.ModelMetadata(_metadata_request())
        assert params(meta)["dtype"] == "bfloat16"
        answer = await live.stub.ModelInfer(
            infer_request("gama", audio=wav(1.0), task="describe", prompt="What is it?",
                          max_new_tokens=4)
        )  # fmt: skip
        assert outputs(answer)["TEXT"][0].decode().strip()
        # A tag answer is bounded by max_new_tokens too (the warm-up's short tag relies on it).
        family = live.core.family
        assert family is not None
        payload = AudioPayload(waveform=np.zeros(16000, np.float32), sample_rate=16000)
        tag = InferRequest("t", Task.TAG, payload, frozenset({"LABELS"}), None, max_new_tokens=2)
        item = family.prepare(tag, Audio(np.zeros(16000, np.float32), 16000, 16000))
        assert item.sampling.max_new_tokens == 2
    if not cpu_has_native_bf16():
        async with live_server(tiny_models / "gama", load=False,
                               settings={"dtype": "bfloat16"}) as live:  # fmt: skip
            with pytest.raises(PlanError, match="--emulated-bfloat16"):
                await live.server.load()


async def test_the_warm_up_answer_is_short(tiny_models: Path) -> None:
    """Readiness after one short answer per round, whatever the model's max_new_tokens (the
    release's 400 kept a 7B model on a CPU from readiness for minutes)."""
    async with live_server(
        tiny_models / "gama", warmup={"iterations": 2, "max_new_tokens": 3}
    ) as live:
        assert live.core.scheduler is not None
        # Two describes of at most 3 tokens each (tag decodes in the batcher, not here).
        assert 0 < live.core.scheduler.stats.decoded_tokens <= 2 * 3
