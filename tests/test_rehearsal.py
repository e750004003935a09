"""`make rehearsal` (benchmarks/rehearsal.py) at the tiny size: write a release
in the published layout, convert it, serve it in bfloat16, ask every task, report memory, and
delete what it wrote. The 7b run is the same code with bigger numbers (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MODEL_SERVERS, NEEDS_MODEL_SERVERS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not MODEL_SERVERS, reason=NEEDS_MODEL_SERVERS)


def test_the_rehearsal_runs_end_to_end(tmp_path: Path) -> None:
    work, report = tmp_path / "work", tmp_path / "work.json"
    done = subprocess.run(
        ["make", "-C", str(ROOT), "rehearsal", "REHEARSAL_SIZE=tiny", f"REHEARSAL_WORK={work}",
         f"REHEARSAL_OUT={tmp_path / 'bench.md'}", "REHEARSAL_ARGS=--no-wav2vec2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = json.loads(report.read_text())
    steps = {s["name"]: s for s in got["steps"]}
    assert list(steps) == [
        "write release", "export (convert)", "serve: load, plan and warm up", "ask: describe",
        "ask: tag", "ask: embed", "ask: describe, streamed", "serve: peak anon over weights",
    ]  # fmt: skip
    assert all(s["ok"] for s in got["steps"]) and got["ok"]
    # Memory was really sampled, and the server computed in the dtype asked for.
    assert 0 < steps["export (convert)"]["peak_anon"] <= 6 * 2**30
    assert (
        steps["serve: peak anon over weights"]["peak_anon"] > got["facts"]["weights_bfloat16_bytes"]
    )
    assert got["facts"]["metadata"]["dtype"] == "bfloat16"
    assert got["facts"]["metadata"]["kv_budget_tokens"] > 0
    assert "EMBEDDING [1, 128]" in steps["ask: embed"]["detail"]
    assert not work.exists()  # deleted unless --keep
    assert "## Full-size rehearsal (tiny)" in (tmp_path / "bench.md").read_text()
