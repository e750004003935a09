"""`make gpu-check` (benchmarks/gpu_check.py) where no GPU is: it refuses at once, its
arguments are checked, and its report (table, JSON, exit status) says what failed. Its checks
themselves run only on a CUDA machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import NO_CUDA, GpuReport, Throughput, cuda_device, main

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_it_refuses_at_once(tmp_path: Path) -> None:
    if cuda_device() is not None:
        pytest.skip("a CUDA device is here: the refusal cannot be shown")
    done = subprocess.run(["make", "gpu-check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode != 0
    assert "gpu-check: no CUDA device here" in done.stderr, done.stderr[-2000:]
    assert main(["--size", "1b", "--json", str(tmp_path / "r.json")]) == NO_CUDA
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--size", "13b"], "invalid choice: '13b'"), (["--seconds", "0"], "must be positive")],
)
def test_arguments_are_checked(argv: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_the_report_says_what_failed() -> None:
    report = GpuReport("NVIDIA H100 80GB HBM3", "1b")
    assert not report.ok  # nothing checked is not a pass
    report.check("ONNX Runtime session on CUDAExecutionProvider", True, "providers [...]")
    report.throughput += [Throughput("continuous", 8, 300.0, 90.0, 140.0),
                          Throughput("static", 8, 150.0, 900.0, 1500.0)]  # fmt: skip
    assert report.ok and report.ratio(8) == 2.0 and report.ratio(32) is None
    report.check("NVML metrics: utilisation, memory used, memory limit", False, "none")
    assert not report.ok
    table = report.table()
    assert "| NVML metrics: utilisation, memory used, memory limit | FAILED | none |" in table
    assert "| continuous | 8 | 300.0 | 90 / 140 | 2.00x |" in table
    document = json.loads(json.dumps(report.to_json()))
    assert document["ok"] is False and document["device"] == "NVIDIA H100 80GB HBM3"
    assert [c["ok"] for c in document["checks"]] == [True, False]
    assert document["throughput"][1]["batching"] == "static"
