"""`evaluation make-dataset` and `evaluation compare` as a user runs them: real processes
against real model servers, including a run killed midway and resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.dataset import espeak, make_dataset
from tests.support.processes import ServerProcess


def _evaluation(*args: str) -> list[str]:
    return [sys.executable, "-m", "evaluation", *args]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    done = subprocess.run(
        _evaluation("make-dataset", "--out", str(out), "--per-class", "10"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote" in done.stdout
    return out / "manifest.jsonl"


def _compare(
    manifest: Path,
    out: Path,
    servers: dict[str, ServerProcess],
    *extra: str,
    models: str = "gama,wav2vec2",
) -> list[str]:
    return _evaluation(
        "compare",
        "--dataset",
        str(manifest),
        "--models",
        models,
        "--out",
        str(out),
        "--endpoint",
        f"gama={servers['gama'].address}",
        "--endpoint",
        f"wav2vec2={servers['wav2vec2'].address}",
        "--no-progress",
        *extra,
    )


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet


def _deterministic(report: dict) -> dict:
    """What must not depend on whether the run was interrupted: everything but the timings
    (and the memory high-water marks, which are a property of the servers, not of the run)."""
    models = {
        name: {k: v for k, v in summary.items() if k not in ("latency_ms", "memory")}
        for name, summary in report["models"].items()
    }
    comparisons = [
        {
            "paired_error": c["paired"]["per_clip_error"],
            "mcnemar": c["paired"]["mcnemar"],
            "quality_criteria": [r for r in c["criteria"] if not r["metric"].startswith("latency")],
        }
        for c in report["comparisons"]
    ]
    return {"dataset": report["dataset"], "models": models, "comparisons": comparisons}


def test_dataset_is_labelled_and_reproducible(dataset: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    labels = {r["labels"][0] for r in rows}
    assert {"tone", "chirp", "noise", "click", "silence"} <= labels
    again = make_dataset(tmp_path / "again", per_class=10, seed=0, speech=False)
    first = dataset.parent / "clips" / "chirp_003.wav"
    assert (again.manifest.parent / "clips" / "chirp_003.wav").read_bytes() == first.read_bytes()
    if espeak() is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech clips")
    speech = [r for r in rows if r["labels"] == ["speech"]]
    assert len(speech) == 10 and all(r["transcript"] for r in speech)


def test_compare_writes_four_outputs_and_resumes_to_the_same_report(
    dataset: Path, tmp_path: Path, model_servers: dict[str, ServerProcess]
) -> None:
    whole = tmp_path / "whole"
    done = _run(_compare(dataset, whole, model_servers, "--task", "embed"))
    assert done.returncode == 0, done.stderr
    assert "gama against wav2vec2:" in done.stdout
    for name in ("report.json", "report.md", "report.html", "results.sqlite"):
        assert (whole / name).is_file(), name
    report = json.loads((whole / "report.json").read_text())
    clips = report["dataset"]["clips"]
    assert clips == len(dataset.read_text().splitlines())
    for summary in report["models"].values():
        assert summary["clips"] == clips and summary["errors"] == {}
        assert 0 <= summary["quality"]["knn_accuracy"] <= 1
        latency = summary["latency_ms"]
        assert latency["client"]["p50"] > latency["server_compute"]["p50"]
        assert summary["memory"]["rss_bytes"] > 50 * 2**20  # a real model server's footprint
        assert summary["memory"]["peak_rss_bytes"] >= summary["memory"]["rss_bytes"]
    comparison = report["comparisons"][0]
    assert comparison["recommendation"]["verdict"] in {"ADOPT", "KEEP_BASELINE", "INCONCLUSIVE"}
    assert {r["metric"] for r in comparison["criteria"]} == {"knn_accuracy", "latency_p95_ms"}
    page = (whole / "report.html").read_text()
    assert page.count("<svg") == 4
    # The chart the verdict rests on: a row per criterion, labelled with its status.
    assert "Criteria: each worsening&#x27;s interval against its bound" in page
    for r in comparison["criteria"]:
        assert f"<!-- gama: {r['metric']} ({r['kind']}) {r['status']} -->" in page, r
    # Namespaces (xmlns="http://...") name things; these forms would fetch them.
    for fetch in ("<script", "<link", "src=", "@import", "url(http", 'href="http', "href='http"):
        assert fetch not in page, f"report.html would fetch something: {fetch}"

    # The same run, killed midway with SIGKILL and started again.
    resumed = tmp_path / "resumed"
    db = resumed / "results.sqlite"
    proc = subprocess.Popen(
        _compare(dataset, resumed, model_servers, "--task", "embed"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _rows(db) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _rows(db)
    assert 0 < killed_at < 2 * clips, "the run was not interrupted midway"
    again = _run(_compare(dataset, resumed, model_servers, "--task", "embed"))
    assert again.returncode == 0, again.stderr
    assert _rows(db) == 2 * clips
    second = json.loads((resumed / "report.json").read_text())
    assert _deterministic(second) == _deterministic(report)

    # Another run (here: other models) into the same directory would mix results: refused with
    # a way out. (Not another task: only embed is shared by both models on every clip.)
    other = _run(_compare(dataset, resumed, model_servers, "--task", "embed", models="wav2vec2"))
    assert other.returncode == 3
    assert "differs in: " in other.stderr and "--fresh" in other.stderr


def test_compare_refuses_unsupported_task_and_bad_manifest(
    dataset: Path, tmp_path: Path, model_servers: dict[str, ServerProcess]
) -> None:
    done = _run(_compare(dataset, tmp_path / "tag", model_servers, "--task", "tag"))
    assert done.returncode == 3
    assert "model wav2vec2 cannot tag (it supports embed, transcribe)" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "missing.wav", "labels": ["tone"]}\n')
    done = _run(_compare(bad, tmp_path / "bad", model_servers, "--task", "embed"))
    assert done.returncode == 2
    assert "bad.jsonl:1: audio: no file" in done.stderr


@pytest.mark.skipif(espeak() is None, reason="espeak-ng is not installed: no speech clips")
def test_transcription_comparison_scores_wer(
    dataset: Path, tmp_path: Path, model_servers: dict[str, ServerProcess]
) -> None:
    done = _run(_compare(dataset, tmp_path / "asr", model_servers, "--task", "transcribe"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "asr" / "report.json").read_text())
    assert report["dataset"]["clips"] == 10  # only clips with a transcript
    w2v = report["models"]["wav2vec2"]
    assert w2v["sent_task"] == "transcribe"
    assert report["models"]["gama"]["sent_task"] == "describe"  # asked to transcribe by prompt
    assert w2v["quality"]["wer"] > 0  # random tiny weights cannot transcribe
    assert w2v["confusions"] == []  # transcription has no classes to confuse
    kinds = w2v["edit_kinds"]
    assert sum(kinds.values()) > 0
    assert "per_clip_error" in report["comparisons"][0]["paired"]


def test_router_compare_says_where_the_command_moved() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "compare", "--dataset", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "moved to `evaluation compare`" in done.stderr
