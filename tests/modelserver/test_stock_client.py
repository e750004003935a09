"""Done-when 2: `modelserver serve` processes answer tritonclient's stock gRPC client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.audio import wav
from tests.support.processes import modelserver

PROBE = Path(__file__).with_name("tritonclient_probe.py")


def _probe(address: str, model: str, clip: Path, *tasks: str, prompt: str | None = None) -> dict:  # type: ignore[type-arg]
    args = [sys.executable, str(PROBE), "--url", address, "--model", model, "--wav", str(clip)]
    for task in tasks:
        args += ["--task", task]
    if prompt:
        args += ["--prompt", prompt]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_tritonclient_against_both_model_servers(tiny_models: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav(1.5))
    with (
        modelserver(tiny_models / "wav2vec2", tmp_path) as w2v,
        modelserver(tiny_models / "gama", tmp_path) as gama,
    ):
        a = _probe(w2v.address, "wav2vec2", clip, "transcribe", "embed")
        b = _probe(
            gama.address, "gama", clip, "tag", "embed", "describe", prompt="What do you hear?"
        )

    for report in (a, b):
        assert report["live"] and report["ready"] and report["model_ready"]
    assert a["metadata"]["name"] == "wav2vec2"
    # Triton's ModelMetadataResponse has no `parameters` field: a stock client skips our
    # extension (field 6) and still reads the standard fields.
    assert a["metadata"]["platform"] == "onnxruntime_onnx"
    assert {o["name"] for o in a["metadata"]["outputs"]} == {"TEXT", "EMBEDDING"}
    assert {o["name"] for o in b["metadata"]["outputs"]} == {
        "TEXT",
        "EMBEDDING",
        "LABELS",
        "SCORES",
    }
    assert isinstance(a["results"]["transcribe"]["outputs"]["TEXT"][0], str)
    emb = a["results"]["embed"]["outputs"]["EMBEDDING"]
    assert emb["shape"] == [1, 64] and emb["finite"]
    assert "compute_ms" in a["results"]["embed"]["parameters"]

    tags = b["results"]["tag"]["outputs"]
    assert len(tags["LABELS"]) == tags["SCORES"]["shape"][0] >= 1
    assert b["results"]["embed"]["outputs"]["EMBEDDING"]["shape"] == [1, 128]
    answer = b["results"]["describe"]["outputs"]["TEXT"][0]
    assert answer.strip() and "\ufffd" not in answer
