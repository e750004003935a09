"""`make demo`'s program, end to end on the tiny models, and its clean-up on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from evaluation.dataset import make_dataset


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("demo-data"), per_class=4).manifest


def _demo(models: Path, manifest: Path, out: Path, seconds: float) -> list[str]:
    return [
        sys.executable, "-m", "demo", "--models", str(models), "--dataset", str(manifest),
        "--out", str(out), "--seconds", str(seconds),
    ]  # fmt: skip


def _ports(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"on 127\.0\.0\.1:(\d+)", output)]


def _assert_nothing_left(out: Path, ports: list[int]) -> None:
    assert len(ports) == 4  # two model servers, the router, the rollout controller
    for port in ports:
        with socket.socket() as s:
            # SO_REUSEADDR passes over closed connections in TIME_WAIT, not over a listener.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    strays = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(out) in arg for arg in (p.info["cmdline"] or []))
    ]
    assert not strays, f"processes left behind: {strays}"


def test_demo_tells_the_whole_story_and_leaves_nothing(
    tiny_models: Path, manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        _demo(tiny_models, manifest, out, 10), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    for expected in (
        "recommendation for gama:",
        "GAMA streams its answer",
        "killing the primary, wav2vec2",
        "experiment embed-gama:",
        "ModelUnhealthy",
        "rollout controller decisions",
        "zero failed requests through the primary's loss",
        "still running: none",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert re.search(r"requests: (\d+) answered, 0 failed", text)
    assert re.search(r"\d+ tokens \((stop|length)\), served by gama, quality passed", text), text
    assert "served by a fallback" in text and not re.search(r" 0 served by a fallback", text)
    assert re.search(r"start +coverage +5% -> +5%", text), text  # the controller adopted it
    assert (out / "compare" / "report.html").is_file()
    page = out / "results.html"
    assert f"results page (verdict, effects, segments, ramp): {page}" in text
    html = page.read_text()
    assert "<h2>Segments by x-client</h2>" in html and "<td>ios</td>" in html
    _assert_nothing_left(out, _ports(text))


def test_ctrl_c_stops_every_process(tiny_models: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        _demo(tiny_models, manifest, out, 60),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        seen.append(line)
        if "== 5/7" in line or time.monotonic() > deadline:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    rest, _ = proc.communicate(timeout=60)
    text = "".join(seen) + rest
    assert proc.returncode == 130, text
    assert "still running: none" in text
    _assert_nothing_left(out, _ports(text))
