"""benchmarks/mlserver_compare.py: the throughput ratio's bootstrap, MLServer's model
repository as the benchmark writes it, and (where MLServer's venv exists) a short real run
against MLServer on the tiny wav2vec2. MLServer lives in a venv of its own, which the
benchmark makes on first use (a download of its dependencies), so the suite does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import Load
from benchmarks.mlserver_compare import mlserver_model, ratio_interval

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/var/tmp/mlserver-venv"))


def _load(per_second: float) -> Load:
    return Load(int(per_second * 10), 10.0, 100.0, 200.0, 1.0, [100.0])


def test_the_ratio_and_its_interval() -> None:
    ratio, low, high = ratio_interval([_load(2.0), _load(2.2), _load(1.8)],
                                      [_load(1.0), _load(1.1), _load(0.9)])  # fmt: skip
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) == high
    ratio, low, high = ratio_interval([_load(1.0), _load(1.4)], [_load(1.2), _load(1.2)])
    assert ratio == pytest.approx(1.0)
    assert low < ratio < high


def test_mlserver_gets_the_same_file_and_vocabulary(tiny_models: Path, tmp_path: Path) -> None:
    repo = mlserver_model(tiny_models / "wav2vec2", tmp_path / "repo", 12345)
    settings = json.loads((repo / "wav2vec2" / "model-settings.json").read_text())
    assert settings["implementation"] == "runtime.OnnxWav2Vec2"
    assert Path(settings["parameters"]["uri"]) == (tiny_models / "wav2vec2" / "model.onnx")
    assert settings["parameters"]["extra"]["vocab"][:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"]
    assert (settings["max_batch_size"], settings["max_batch_time"]) == (16, 0.002)
    assert (repo / "wav2vec2" / "runtime.py").is_file()
    assert json.loads((repo / "settings.json").read_text())["grpc_port"] == 12345


def test_a_short_run_against_mlserver(tiny_models: Path) -> None:
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        pytest.skip(f"needs MLServer's venv at {MLSERVER_VENV} (python -m "
                    "benchmarks.mlserver_compare makes it on first use)")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mlserver_compare", "--model-dir",
         str(tiny_models / "wav2vec2"), "--mlserver-venv", str(MLSERVER_VENV),
         "--seconds", "1", "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ours / MLServer throughput at c=8" in done.stdout
