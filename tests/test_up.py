"""`make up` as a newcomer meets it: the shipped configuration (only its ports changed) stays up,
the README's Python client works against it, every command of docs/operations.md that needs no
Kubernetes runs as written, and `make down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PORTS = (50051, 50061, 50062, 9464)  # the router, the model servers, /metrics
STAYS_UP_SECONDS = 30  # `make up` used to stop itself after about 13 s


def _blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def _readme_client(ports: dict[int, int], data: Path) -> str:
    """The README's first Python snippet (the router client), pointed at this stack."""
    (code,) = [b for b in _blocks((ROOT / "README.md").read_text(), "python") if "AudioRouter" in b]
    for shipped, port in ports.items():
        code = code.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{port}")
    return code.replace("data/demo/", f"{data}/")


def _operations_commands() -> list[list[str]]:
    commands = []
    for block in _blocks((ROOT / "docs" / "operations.md").read_text(), "sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "router":
                commands.append(words)
    return commands


def _run(words: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(words, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def _wait_for(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()  # type: ignore[operator]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_make_up_serves_the_docs_commands_and_make_down_cleans_up(
    tiny_models: Path, tmp_path: Path
) -> None:
    ports = {shipped: free_port() for shipped in SHIPPED_PORTS}
    config = tmp_path / "config" / "router.yaml"
    config.parent.mkdir()
    shipped = (ROOT / "config" / "router.yaml").read_text()
    text = shipped
    for old, new in ports.items():
        text = text.replace(f":{old}", f":{new}").replace(f"port: {old}", f"port: {new}")
    assert text.count(str(ports[50051])) >= 1 and text != shipped
    config.write_text(text)
    out, data = tmp_path / "up", tmp_path / "data" / "demo"
    make_vars = [f"UP_CONFIG={config}", f"UP_OUT={out}", f"MODELS={tiny_models}", f"DATASET={data}"]
    started = time.monotonic()
    up = subprocess.Popen(
        ["make", "-C", str(ROOT), "up", *make_vars],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C or `make down` stops everything" in line:
                break
        assert up.poll() is None, "".join(lines)
        router = f"127.0.0.1:{ports[50051]}"
        assert f"router on {router}" in "".join(lines), "".join(lines)

        client = _readme_client(ports, data)
        done = subprocess.run(
            [sys.executable, "-c", client], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # route.model, route.arm, fallback_used, quality.passed; then the streamed answer ends
        # with its finish reason and quality.
        assert re.match(r"(wav2vec2|gama) \S* False True\n", done.stdout), done.stdout
        assert re.search(r"\n (stop|length) True\n$", done.stdout), done.stdout

        # The observability guide's first step works as written: the router's /metrics.
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[9464]}/metrics", timeout=10) as r:
            assert "gamaserving_router_requests_total" in r.read().decode()

        env = {**os.environ, "ROUTER_ADMIN_TARGET": router}
        admin = [sys.executable, "-m", "router.cli", "admin"]
        # An alert to acknowledge: a broken file makes ConfigReloadFailed fire.
        config.write_text("routes: [not, a, mapping")

        def reload_alert() -> str | None:
            listed = json.loads(_run([*admin, "--json", "alerts"], env).stdout)
            ids = [a["id"] for a in listed["alerts"] if a["name"] == "ConfigReloadFailed"]
            return ids[0] if ids else None

        alert_id = str(_wait_for(reload_alert, 30, "ConfigReloadFailed"))
        config.write_text(text)

        remaining = STAYS_UP_SECONDS - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)  # the point: the stack is still serving after this long
        assert up.poll() is None, "make up stopped by itself"

        commands = _operations_commands()
        assert len(commands) >= 10, commands
        for words in commands:
            words = [w.replace("ALERT_ID", alert_id).replace("50051", str(ports[50051]))
                     for w in words]  # fmt: skip
            words = [sys.executable, "-m", "router.cli", *words[1:]]
            words = [str(config) if w == "config/router.yaml" else
                     w.replace("sqlite:///config/state/", f"sqlite:///{config.parent}/state/")
                     for w in words]  # fmt: skip
            result = _run(words, env)
            said = result.stdout + result.stderr
            assert result.returncode == 0, f"{shlex.join(words)}:\n{said}"
            if "--once" in words:
                assert "no decision" in said and "paused by hand" in said, said
            if "ack" in words:
                assert "you" in result.stdout, result.stdout  # acknowledged_by
        listed = json.loads(_run([*admin, "--json", "alerts", "--all"], env).stdout)
        (acked,) = [a for a in listed["alerts"] if a["id"] == alert_id]
        assert acked["acknowledged"] and acked["acknowledged_by"] == "you"

        down = subprocess.run(
            ["make", "-C", str(ROOT), "down", f"UP_OUT={out}"], capture_output=True, text=True
        )
        assert down.returncode == 0 and "stopping the stack" in down.stdout, down.stdout
        rest, _ = up.communicate(timeout=60)
        assert up.returncode == 0, "".join(lines) + rest
        assert "stopped 4 processes" in rest and "still running: none" in rest, rest
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(30)
    for port in ports.values():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # nothing listens there any more
    strays = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(tmp_path) in arg for arg in (p.info["cmdline"] or []))
    ]
    assert not strays, f"processes left behind: {strays}"


@pytest.mark.slow
def test_make_up_names_a_process_that_dies(tiny_models: Path, tmp_path: Path) -> None:
    """One process of four dies: the stack says which, with the end of its log, and stops."""
    config = tmp_path / "router.yaml"
    text = (ROOT / "config" / "router.yaml").read_text()
    gama_port = free_port()
    for old in SHIPPED_PORTS:
        text = text.replace(str(old), str(gama_port if old == 50062 else free_port()))
    config.write_text(text)
    up = subprocess.Popen(
        [sys.executable, "-m", "demo", "up", "--config", str(config), "--models",
         str(tiny_models), "--out", str(tmp_path / "up")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if "stops everything" in line:
                break
        (gama,) = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(gama_port) in (p.info["cmdline"] or []) and "serve" in p.info["cmdline"]
        ]
        gama.kill()
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 1, out + err
    assert "gama exited unexpectedly (exit code -9); the end of" in err, err
    assert "gama.log:" in err and "model gama: loading -> ready" in err, err  # its log
    assert "stopped 4 processes" in out and "still running: none" in out, out
