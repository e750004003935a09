"""`router admin` against a live router: every RouterAdmin RPC and health, with and without an
admin token, as tables and as strict JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from router.cli import main
from tests.router.conftest import LiveRouter, base_config, live_router
from tests.support.audio import wav
from tests.support.experiments import two_arms
from tests.support.fault_server import fault_server

ROUTER = str(Path(sys.executable).with_name("router"))


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _config(a: str, b: str) -> dict[str, Any]:
    return base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": two_arms()})


@contextlib.asynccontextmanager
async def _served(tmp_path: Path) -> AsyncIterator[tuple[LiveRouter, str]]:
    """A router over two fault-free model servers, 20 users' requests in its results store;
    yields it and its address."""
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        async with live_router(_config(a, b), tmp_path) as router:
            for i in range(20):
                await router.process(rpb.TASK_TAG, wav(0.2), user_id=f"u{i}")
            await router.flush()
            yield router, f"127.0.0.1:{router.server.port}"


async def _admin(
    capsys: pytest.CaptureFixture[str], target: str, *words: str
) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["admin", "--target", target, *words])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_every_admin_command_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _served(tmp_path) as (router, target):
        code, out, _ = await _admin(capsys, target, "--json", "experiments")
        assert code == 0
        (e,) = _strict(out)["experiments"]
        assert (e["name"], e["task"], e["coverage"]) == ("ab", "TASK_TAG", 1.0)
        code, out, _ = await _admin(capsys, target, "experiments")
        assert code == 0 and out.splitlines()[0].split()[:3] == ["EXPERIMENT", "TASK", "SEED"]
        assert "control=a:0.5 candidate=b:0.5" in out

        code, out, _ = await _admin(capsys, target, "--json", "report", "ab")
        report = _strict(out)
        assert code == 0 and sum(arm["count"] for arm in report["arms"]) == 20
        # No errors in either arm: the relative change is undefined, and null says so.
        errors = [c for c in report["comparisons"] if c["metric"] == "error_rate"]
        assert errors and all(c["relative"] is None for c in errors)
        code, out, _ = await _admin(capsys, target, "report", "ab")
        assert code == 0 and out.startswith("experiment ab, seed p1 (current phase): ")

        code, out, _ = await _admin(capsys, target, "--json", "assignment", "ab", "u1", "u2")
        got = _strict(out)["assignments"]
        expected = [(await router.process(rpb.TASK_TAG, wav(0.2), user_id=u)).route.arm
                    for u in ("u1", "u2")]  # fmt: skip
        assert code == 0 and [x["arm"] for x in got] == expected
        code, _, err = await _admin(capsys, target, "assignment", "nope", "u1")
        assert code == 1 and "no experiment 'nope' on this router (experiments: ab)" in err

        code, out, _ = await _admin(capsys, target, "--json", "quality")
        assert code == 0 and {c["model"] for c in _strict(out)["checks"]} <= {"a", "b"}
        code, out, _ = await _admin(capsys, target, "quality", "--model", "a")
        assert code == 0 and "checks:" in out and "trends:" in out

        code, out, _ = await _admin(capsys, target, "alerts", "--all")
        assert code == 0 and out.split()[:3] == ["ID", "STATE", "SEVERITY"]
        code, _, err = await _admin(capsys, target, "ack", "no-such-alert", "--by", "me")
        assert code == 1 and "NOT_FOUND: no alert 'no-such-alert'" in err

        code, out, _ = await _admin(capsys, target, "--json", "health")
        assert code == 0 and _strict(out) == {"liveness": "SERVING", "readiness": "SERVING"}
        code, out, _ = await _admin(capsys, target, "health", "--service", "nonesuch")
        assert code == 1 and "UNKNOWN_SERVICE" in out


async def test_admin_commands_with_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = _config(a, b)
        cfg["server"]["admin_token_file"] = "token"  # relative to the configuration file
        async with live_router(cfg, tmp_path) as router:
            target = f"127.0.0.1:{router.server.port}"
            code, _, err = await _admin(capsys, target, "experiments")
            assert code == 1 and "UNAUTHENTICATED" in err
            wrong = tmp_path / "wrong"
            wrong.write_text("guess")
            code, _, err = await _admin(capsys, target, "--token-file", str(wrong), "alerts")
            assert code == 1 and "UNAUTHENTICATED" in err
            code, out, _ = await _admin(
                capsys, target, "--token-file", str(token), "--json", "experiments"
            )
            assert code == 0 and _strict(out)["experiments"][0]["name"] == "ab"
            code, out, _ = await _admin(capsys, target, "--token-file", str(token), "alerts")
            assert code == 0 and out.startswith("ID")
            code, _, err = await _admin(
                capsys, target, "--token-file", str(tmp_path / "absent"), "alerts"
            )
            assert code == 2 and "--token-file: cannot read" in err


async def test_what_a_newcomer_tripped_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json after the command, an unknown seed named, reasons as text, a closed pipe."""
    async with _served(tmp_path) as (_, target):
        code, out, _ = await _admin(capsys, target, "report", "ab", "--json")
        assert code == 0 and _strict(out)["experiment"] == "ab"
        code, out, _ = await _admin(capsys, target, "report", "ab")
        assert code == 0 and "{'" not in out
        assert re.search(r"requests in some arm: control \d+, candidate \d+", out), out
        code, _, err = await _admin(capsys, target, "report", "ab", "--seed", "nope")
        assert code == 1 and (
            "NOT_FOUND: experiment 'ab' has no phase with seed 'nope'; its phases: p1" in err
        ), err

        # The reader is gone before the first line is written.
        closed = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", f"{ROUTER} admin --target {target} report ab | true"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "Traceback" not in closed.stderr and "BrokenPipe" not in closed.stderr


def test_admin_help_says_each_default_once() -> None:
    helps = [" ".join(subprocess.run([ROUTER, "admin", *words, "--help"], capture_output=True,
                                     text=True, check=True).stdout.split())
             for words in ([], ["ack"])]  # fmt: skip
    for text in helps:
        assert "(default: None)" not in text and "(default: False)" not in text, text
    assert "(default: $ROUTER_ADMIN_TOKEN, if set) --tls-ca" in helps[0], helps[0]
    assert "(default: 127.0.0.1:50051)" in helps[0]
