"""`make gpu-check`: what to run the day a GPU is lent, from a fresh checkout after
`make install`, in under ten minutes (1b; 7b needs about fifteen on a fast disk).

1. ONNX Runtime runs wav2vec2-base on the CUDA execution provider, and agrees with the CPU.
2. GAMA's rehearsal model (random weights in the released layout, `--size`) is served in
   bfloat16 on the GPU, its KV budget planned from GPU memory.
3. Tokens/s and time to first token at c=1, 8 and 32, continuous against static batching
   (one server at a time: each plans the GPU's memory for itself).
4. The NVML metrics a dashboard reads: utilisation, memory used and memory limit.

It prints one table, writes it as JSON, and exits 1 when a check fails; without CUDA it
refuses at once (exit 3).

    python -m benchmarks.gpu_check --size 1b --json gpu-check.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

NO_CUDA = 3
MODELSERVER = [sys.executable, "-m", "modelserver.cli"]
# OpenTelemetry's hw.gpu.* gauges as Prometheus names them (gamaserving/telemetry).
NVML_METRICS = ("hw_gpu_utilization_ratio", "hw_gpu_memory_usage_bytes",
                "hw_gpu_memory_limit_bytes")  # fmt: skip


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Throughput:
    batching: str
    concurrency: int
    tokens_per_s: float
    first_token_p50_ms: float
    first_token_p99_ms: float


@dataclass
class GpuReport:
    device: str
    size: str
    checks: list[Check] = field(default_factory=list)
    throughput: list[Throughput] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        print(f"{'ok    ' if ok else 'FAILED'} {name}: {detail}", flush=True)
        return ok

    def ratio(self, concurrency: int) -> float | None:
        """Continuous over static tokens/s at one concurrency."""
        by = {(t.batching, t.concurrency): t.tokens_per_s for t in self.throughput}
        static = by.get(("static", concurrency))
        cont = by.get(("continuous", concurrency))
        return None if not static or cont is None else cont / static

    def table(self) -> str:
        lines = [f"gpu-check on {self.device}, GAMA {self.size}", "",
                 "| check | result | detail |", "| --- | --- | --- |"]  # fmt: skip
        lines += [f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {c.detail} |" for c in self.checks]
        if self.throughput:
            lines += ["", "| batching | concurrency | tokens/s | first token p50 / p99 ms | "
                      "continuous / static |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
            for t in self.throughput:
                ratio = self.ratio(t.concurrency) if t.batching == "continuous" else None
                lines.append(
                    f"| {t.batching} | {t.concurrency} | {t.tokens_per_s:.1f} | "
                    f"{t.first_token_p50_ms:.0f} / {t.first_token_p99_ms:.0f} | "
                    f"{'' if ratio is None else f'{ratio:.2f}x'} |"
                )
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def cuda_device() -> str | None:
    """The GPU's name when torch can really run a CUDA kernel here, else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        x = torch.ones(4, device="cuda")
        if float((x + x).sum().item()) != 8.0:
            return None
    except RuntimeError:
        return None
    return str(torch.cuda.get_device_name(0))


def _run(args: list[str], timeout: float) -> tuple[int, str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return done.returncode, (done.stdout + done.stderr).strip()


def check_onnx_cuda(report: GpuReport, work: Path) -> None:
    import onnxruntime as ort

    checkpoint, served = work / "wav2vec2-checkpoint", work / "wav2vec2"
    rc, out = _run([*MODELSERVER, "make-rehearsal", "--family", "wav2vec2", "--out",
                    str(checkpoint)], 600)  # fmt: skip
    if not report.check("wav2vec2-base written", rc == 0, out.splitlines()[-1] if out else ""):
        return
    rc, out = _run([*MODELSERVER, "export", "--family", "wav2vec2", "--checkpoint",
                    str(checkpoint), "--out", str(served)], 900)  # fmt: skip
    if not report.check("wav2vec2-base exported to ONNX", rc == 0, out[-200:]):
        return
    graph = str(next(served.glob("*.onnx")))
    cuda = ort.InferenceSession(graph, providers=["CUDAExecutionProvider"])
    report.check("ONNX Runtime session on CUDAExecutionProvider",
                 cuda.get_providers()[0] == "CUDAExecutionProvider",
                 f"providers {cuda.get_providers()}")  # fmt: skip
    cpu = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    clip = np.random.default_rng(0).standard_normal((1, 160_000)).astype(np.float32) * 0.1
    # The export's inputs (modelserver/families/wav2vec2/graph.py): samples and their mask.
    feeds = {i.name: clip if "float" in i.type else np.ones(clip.shape, np.int64)
             for i in cuda.get_inputs()}  # fmt: skip
    on_gpu, on_cpu = cuda.run(None, feeds)[0], cpu.run(None, feeds)[0]
    diff = float(np.max(np.abs(on_gpu - on_cpu)))
    report.check("wav2vec2 on CUDA agrees with the CPU", diff < 1e-2,
                 f"10 s clip, max |logit difference| {diff:.2e}")  # fmt: skip


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name.split("{")[0]] = max(values.get(name.split("{")[0], 0.0), float(value))
    return values


def serve_and_measure(report: GpuReport, served: Path, work: Path, seconds: float) -> None:
    from transformers import AutoTokenizer

    from benchmarks.generation import CONCURRENCY, _serving_copy, load
    from tests.support.processes import ServerProcess, free_port, modelserver_args

    tokenizer = AutoTokenizer.from_pretrained(served / "tokenizer")
    for name, continuous in (("continuous", True), ("static", False)):
        model_dir = _serving_copy(served, work / name, continuous)
        port, metrics_port = free_port(), free_port()
        server = ServerProcess(
            modelserver_args(model_dir, port, "--device", "cuda", "--dtype", "bfloat16",
                             "--metrics-port", str(metrics_port)),
            work / f"{name}.log", port,
        )  # fmt: skip
        started = time.monotonic()
        server.start()
        try:
            server.wait_status(timeout=1800)
            ready = time.monotonic() - started
            log = server.log()
            planned = "device cuda" in log and "(planned)" in log
            on_gpu = planned and "dtype=bfloat16" in log
            report.check(f"{name}: served on CUDA in bfloat16, KV planned from GPU memory",
                         on_gpu, f"ready in {ready:.0f} s")  # fmt: skip
            for c in CONCURRENCY:
                cell = asyncio.run(load(server.address, tokenizer, c, seconds, "mix"))
                report.throughput.append(Throughput(name, c, cell.tokens / cell.seconds,
                    cell.p(cell.first_ms, 50), cell.p(cell.first_ms, 99)))  # fmt: skip
                print(f"{name} c={c}: {cell.tokens / cell.seconds:.1f} tokens/s", flush=True)
            if continuous:
                values = _scrape(metrics_port)
                found = {m: values.get(m) for m in NVML_METRICS}
                report.check("NVML metrics: utilisation, memory used, memory limit",
                             all(v is not None for v in found.values())
                             and (found["hw_gpu_memory_limit_bytes"] or 0) > 0,
                             ", ".join(f"{k} {v}" for k, v in found.items()))  # fmt: skip
        finally:
            server.stop()


def run(size: str, work: Path, seconds: float, device: str) -> GpuReport:
    report = GpuReport(device, size)
    work.mkdir(parents=True, exist_ok=True)
    try:
        check_onnx_cuda(report, work)
        release, served = work / "release", work / "gama"
        rc, out = _run([*MODELSERVER, "make-rehearsal", "--family", "gama", "--size", size,
                        "--out", str(release), "--no-progress"], 1800)  # fmt: skip
        if report.check(f"GAMA {size} rehearsal release written", rc == 0, out[-200:]):
            rc, out = _run([*MODELSERVER, "export", "--family", "gama", "--no-progress",
                "--checkpoint", str(release / "checkpoint-2500"), "--base-model",
                str(release / "Llama-2-7b-chat-hf-qformer"), "--labels",
                str(release / "labels.txt"), "--out", str(served)], 1800)  # fmt: skip
            shutil.rmtree(release, ignore_errors=True)
            if report.check(f"GAMA {size} converted", rc == 0, out[-200:]):
                serve_and_measure(report, served, work, seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["7b", "1b", "tiny"], default="7b",
                   help="the rehearsal GAMA (default: 7b; 1b for a short budget)")  # fmt: skip
    p.add_argument("--json", type=Path, default=Path("gpu-check.json"),
                   help="where the report goes (default: gpu-check.json)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/var/tmp/gpu-check"),
                   help="scratch space for the models, deleted at the end")  # fmt: skip
    p.add_argument("--seconds", type=float, default=20.0,
                   help="closed-loop load per cell (default: 20)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seconds <= 0:
        parser().error("--seconds must be positive")
    device = cuda_device()
    if device is None:
        print("gpu-check: no CUDA device here (torch cannot run a CUDA kernel); run it on a "
              "machine with an NVIDIA GPU and its driver, after `make install`",
              file=sys.stderr)  # fmt: skip
        return NO_CUDA
    report = run(args.size, args.work, args.seconds, device)
    print(report.table())
    args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
