"""Experiment results that survive restarts: two router replicas (processes) write one real
PostgreSQL; traffic goes through both and each outcome is reported to the other replica.
`router report --results` counts every answered request per arm exactly, and its outcome means
equal the values sent (a repeated report counting once), after a SIGTERM and restart of one
replica, a SIGKILL once the writer has flushed, and a 40-request database outage."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import uuid
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from router.cli import main as router_main
from tests.router.conftest import base_config
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.postgres import Postgres
from tests.support.processes import ServerProcess, free_port, router_args

CLIP = wav(0.2)


class Replica:
    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.process = ServerProcess(router_args(config, self.port), log, self.port).start()
        self.channel = grpc.aio.insecure_channel(self.process.address)
        self.stub = rpb_grpc.AudioRouterStub(self.channel)

    async def ready(self) -> Replica:
        await asyncio.to_thread(self.process.wait_status, "readiness")
        return self

    async def close(self) -> None:
        await self.channel.close()
        self.process.stop()


class Ledger:
    """What the test sent and what came back: the truth the report must equal."""

    def __init__(self) -> None:
        self.arms: dict[str, str] = {}  # request id -> arm
        self.accepted: dict[str, float] = {}  # request id -> the last value reported

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for arm in self.arms.values():
            out[arm] += 1
        return dict(out)

    def means(self) -> dict[str, float]:
        sums: dict[str, list[float]] = defaultdict(list)
        for request_id, value in self.accepted.items():
            sums[self.arms[request_id]].append(value)
        return {arm: sum(v) / len(v) for arm, v in sums.items()}


async def _traffic(replicas: list[Replica], n: int, ledger: Ledger, start: int) -> None:
    for i in range(start, start + n):
        via, other = replicas[i % 2], replicas[(i + 1) % 2]
        request_id = str(uuid.uuid4())
        answer = await via.stub.Process(
            rpb.ProcessRequest(
                audio=CLIP, task=rpb.TASK_TAG, user_id=f"user-{i % 37}", request_id=request_id
            ),
            timeout=10,
        )
        ledger.arms[request_id] = answer.route.arm
        value = float(i % 3 != 0)
        report = rpb.RecordOutcomeRequest(request_id=request_id, metric="accepted", value=value)
        await other.stub.RecordOutcome(report, timeout=5)
        if i % 5 == 0:  # a retried report: the same value again, through the first replica
            await via.stub.RecordOutcome(report, timeout=5)
        if i % 7 == 0:  # a corrected report: the later value wins
            value = 1.0 - value
            report.value = value
            await other.stub.RecordOutcome(report, timeout=5)
        ledger.accepted[request_id] = value


def _report(config: Path, url: str) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        # The command as an operator types it: the store alone.
        code = router_main(["report", "--results", url, "--experiment", "fleet-ab", "--json"])
    assert code == 0
    return json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))  # type: ignore[no-any-return]


def _matches(fleet: dict[str, Any], ledger: Ledger) -> bool:
    means = {arm: m.get("accepted") for arm, m in fleet["means"].items()}
    return fleet["counts"] == ledger.counts() and all(
        means.get(arm) is not None and abs(means[arm] - mean) < 1e-12
        for arm, mean in ledger.means().items()
    )


async def _settled(config: Path, url: str, ledger: Ledger) -> None:
    """Until the store says what the ledger says (the writers flush every 0.1 s): every
    exposure and every latest outcome, each once."""
    for _ in range(200):
        fleet = await asyncio.to_thread(_report, config, url)
        if _matches(fleet, ledger):
            return
        await asyncio.sleep(0.05)
    assert fleet["counts"] == ledger.counts()
    assert {a: m["accepted"] for a, m in fleet["means"].items()} == ledger.means()


async def test_two_replicas_lose_nothing_through_restarts_kills_and_an_outage(
    postgres: Postgres, tmp_path: Path
) -> None:
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        experiment = {
            "name": "fleet-ab",
            "seed": "s1",
            "arms": [
                {"name": "control", "model": "a", "weight": 0.5},
                {"name": "candidate", "model": "b", "weight": 0.5},
            ],
        }
        cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": experiment})
        cfg["results"] = {"url": postgres.url, "flush_ms": 100}
        cfg["outcomes"] = {"accepted": {"kind": "binary"}}
        config = tmp_path / "router.yaml"
        config.write_text(yaml.safe_dump(cfg))
        ledger = Ledger()
        logs = tmp_path
        one = await Replica(config, logs / "one.log").ready()
        two = await Replica(config, logs / "two.log").ready()
        try:
            await _traffic([one, two], 60, ledger, 0)
            # SIGTERM: the replica drains, writing everything it holds; then it comes back.
            one.process.signal(signal.SIGTERM)
            assert await asyncio.to_thread(one.process.wait, 30) == 0
            await one.close()
            # Drained: everything it held is in the store. Replica two's last flush may still
            # be on its way (on a loaded machine it takes longer than one's exit), so wait for
            # it; an event one lost would never arrive, and this would fail.
            await _settled(config, postgres.url, ledger)
            one = await Replica(config, logs / "one-again.log").ready()
            await _traffic([one, two], 60, ledger, 60)
            # SIGKILL once the writers have flushed (a quiet spell longer than flush_ms):
            # nothing is lost.
            await _settled(config, postgres.url, ledger)
            two.process.signal(signal.SIGKILL)
            await asyncio.to_thread(two.process.wait, 10)
            await two.close()
            assert _matches(await asyncio.to_thread(_report, config, postgres.url), ledger)
            two = await Replica(config, logs / "two-again.log").ready()
            # The database goes down for 40 requests: none fails or waits on it.
            postgres.stop()
            await _traffic([one, two], 40, ledger, 120)
            postgres.start()
            await _settled(config, postgres.url, ledger)  # the waiting events went in
            assert sum(ledger.counts().values()) == 160
        finally:
            for replica in (one, two):
                await replica.close()
