"""Fleet-wide statistics for one phase: from Prometheus (the per-arm sums `router report`
uses), or, without Prometheus, the sum of every listed replica's admin report. A replica that
does not answer makes the whole round fail: a partial sum is not the fleet."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import grpc

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from router.experiments.results import METRICS, ArmResults
from router.experiments.stats import Moments
from router.fleet import FleetError, fleet_arms


class StatsSource(Protocol):
    async def arms(self, experiment: str, seed: str) -> dict[str, ArmResults]:
        """Per-arm results of the phase over the fleet. Raises FleetError."""

    def describe(self) -> str: ...


class PrometheusSource:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def describe(self) -> str:
        return f"prometheus {self.url}"

    async def arms(self, experiment: str, seed: str) -> dict[str, ArmResults]:
        return await asyncio.to_thread(fleet_arms, self.url, experiment, seed, self.timeout)


def add_moments(into: dict[str, ArmResults], moments: Sequence[rpb.ArmMoments]) -> None:
    for m in moments:
        if m.metric not in METRICS:
            continue
        arm = into.setdefault(m.arm, ArmResults())
        old = arm.metrics[m.metric]
        arm.metrics[m.metric] = Moments(old.n + m.n, old.total + m.sum, old.squares + m.sum_squares)


class RoutersSource:
    """RouterAdmin/GetExperimentReport on each replica, summed."""

    def __init__(self, targets: list[str], token: str | None = None, timeout: float = 5.0) -> None:
        self.targets = targets
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels = [grpc.aio.insecure_channel(t) for t in targets]
        self._stubs = [rpb_grpc.RouterAdminStub(c) for c in self._channels]

    def describe(self) -> str:
        return "routers " + ", ".join(self.targets)

    async def _one(
        self, target: str, stub: rpb_grpc.RouterAdminStub, experiment: str, seed: str
    ) -> rpb.GetExperimentReportResponse:
        try:
            return await stub.GetExperimentReport(  # type: ignore[no-any-return]
                rpb.GetExperimentReportRequest(experiment=experiment, seed=seed),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                # This replica has not loaded the experiment yet: it holds no results.
                return rpb.GetExperimentReportResponse()
            raise FleetError(f"router {target}: {exc.code().name}: {exc.details()}") from None

    async def arms(self, experiment: str, seed: str) -> dict[str, ArmResults]:
        replies = await asyncio.gather(
            *(
                self._one(t, s, experiment, seed)
                for t, s in zip(self.targets, self._stubs, strict=True)
            )
        )
        arms: dict[str, ArmResults] = {}
        for reply in replies:
            add_moments(arms, reply.moments)
        return arms

    async def close(self) -> None:
        for c in self._channels:
            await c.close()
