"""The results store as a replica uses it: exposures and outcomes go in through the writer
(never on the request path), reports come out of the store (in a worker thread)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import grpc

from router.config import OutcomeSettings
from router.errors import RouteError
from router.experiments.segments import dimension_values
from router.metrics import RouterMetrics, Unmeasured
from router.record import RouteResult
from router.results.covariates import DAY
from router.results.query import outcome_trends, phases
from router.results.store import Exposure, Outcome, ResultsStore
from router.results.writer import ResultsWriter


class ExperimentResults:
    def __init__(
        self,
        store: ResultsStore,
        writer: ResultsWriter,
        wall_clock: Callable[[], float] = time.time,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.wall_clock = wall_clock
        self.metrics: RouterMetrics = metrics or Unmeasured()

    def expose(self, r: RouteResult) -> None:
        """One routed request (the caller's own faults excepted): an experiment's exposure
        when it was assigned an arm, else a row that outcome trends per model join."""
        if r.callers_fault:
            return
        output = r.output if r.answer is not None else None
        phase = r.experiment if r.assignment is not None else None
        dimensions: dict[str, str] = {}
        if phase is not None and phase.dimensions:
            facts = replace(r.facts, model_version=output.model_version if output else "")
            dimensions, cut = dimension_values(phase.dimensions, facts)
            for name in cut:
                self.metrics.segment_value_cut(phase.name, name)
        self.writer.add_exposure(
            Exposure(
                request_id=r.request_id,
                experiment=phase.name if phase else "",
                seed=phase.seed if phase else "",
                arm=r.assignment.arm if r.assignment else "",
                model=r.served_model,
                unit=r.unit,
                at=self.wall_clock(),
                latency_ms=r.total_ms,
                error=r.error is not None,
                fallback=r.fallback_used,
                quality_failed=bool(r.failed_checks),
                input_tokens=output.input_tokens if output else 0,
                output_tokens=output.output_tokens if output else 0,
                dimensions=dimensions,
                cuped_lookback_s=phase.cuped.lookback_days * DAY if phase and phase.cuped else 0,
            )
        )

    def record_outcome(
        self, request_id: str, metric: str, value: float, declared: Mapping[str, OutcomeSettings]
    ) -> None:
        """A caller's report about an answer; INVALID_ARGUMENT names the field that is wrong.
        Buffered like exposures: it neither fails nor waits while the store is down."""
        if not request_id:
            raise invalid("request_id is required: the request id of the answer reported on")
        settings = declared.get(metric)
        if settings is None:
            known = ", ".join(sorted(declared)) or "none are declared (router.yaml `outcomes`)"
            raise invalid(f"metric: {metric!r} is not a declared outcome (outcomes: {known})")
        problem = settings.problem(value)
        if problem:
            raise invalid(f"value: {problem} for metric {metric!r}")
        self.writer.add_outcome(Outcome(request_id, metric, value, self.wall_clock()))

    async def outcome_trends(
        self, since: float, bucket_seconds: float, model: str = ""
    ) -> dict[tuple[str, str], list[tuple[float, float, int]]]:
        return await asyncio.to_thread(outcome_trends, self.store, since, bucket_seconds, model)

    async def phases(self, experiment: str) -> list[str]:
        return await asyncio.to_thread(phases, self.store, experiment)

    async def close(self) -> None:
        await self.writer.close()
        self.store.close()


def invalid(message: str) -> RouteError:
    return RouteError(grpc.StatusCode.INVALID_ARGUMENT, message)
