"""AudioRouter and RouterAdmin: each method converts, calls the core, converts back."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from gamaserving.grpcutil import grpc_errors, stream_errors
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from router.alerts.engine import Alert
from router.alerts.history import AlreadyAcknowledged
from router.alerts.service import AlertService
from router.api.convert import TASK_ENUMS, TASKS, check_ids, process_response, route_request
from router.api.report_proto import report_response
from router.core import RouterCore
from router.errors import RouteError
from router.experiments.segments import Correction

log = logging.getLogger(__name__)

MAX_ASSIGNMENTS = 10_000


class Admission:
    """In-flight limit: beyond it requests are shed at once, and draining refuses new ones."""

    def __init__(self, limit: int, on_shed: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self._on_shed = on_shed
        self.in_flight = 0
        self.shed = 0
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        if self.draining:
            raise RouteError(
                grpc.StatusCode.UNAVAILABLE, "the router is draining; retry on another replica"
            )
        if self.in_flight >= self.limit:
            self.shed += 1
            self._on_shed()
            raise RouteError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the router has {self.in_flight} requests in flight (limit {self.limit}); "
                "retry with backoff",
            )
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (a `-bin` key holds bytes: left out); a repeated key keeps
    its first value."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out.setdefault(key, value)
    return out


class AudioRouterServicer(rpb_grpc.AudioRouterServicer):
    def __init__(self, core: RouterCore, admission: Admission) -> None:
        self.core = core
        self.admission = admission

    @grpc_errors
    async def Process(
        self, request: rpb.ProcessRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ProcessResponse:
        self.admission.enter()
        try:
            plain = route_request(request, _metadata(context))
            remaining = context.time_remaining()
            deadline = None if remaining is None else self.core.clock() + remaining
            result = await self.core.process(plain, deadline)
            return process_response(plain, result)
        finally:
            self.admission.leave()

    @stream_errors
    async def ProcessStream(
        self, request: rpb.ProcessRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.ProcessStreamResponse]:
        self.admission.enter()
        try:
            plain = route_request(request, _metadata(context))
            remaining = context.time_remaining()
            deadline = None if remaining is None else self.core.clock() + remaining
            pieces: asyncio.Queue[str | None] = asyncio.Queue()

            async def piece(text: str) -> None:
                pieces.put_nowait(text)

            routing = asyncio.ensure_future(self.core.process(plain, deadline, piece))
            routing.add_done_callback(lambda _: pieces.put_nowait(None))
            try:
                while (text := await pieces.get()) is not None:
                    yield rpb.ProcessStreamResponse(request_id=plain.request_id, text=text)
                result = routing.result()
            finally:
                # The caller went away: the model server's sequence goes with its stream.
                routing.cancel()
            yield rpb.ProcessStreamResponse(
                request_id=plain.request_id, result=process_response(plain, result)
            )
        finally:
            self.admission.leave()

    @grpc_errors
    async def RecordOutcome(
        self, request: rpb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> rpb.RecordOutcomeResponse:
        self.admission.enter()
        try:
            check_ids(("request_id", request.request_id))
            results, declared = self.core.outcome_sink()
            results.record_outcome(request.request_id, request.metric, request.value, declared)
            return rpb.RecordOutcomeResponse()
        finally:
            self.admission.leave()


def _nan_to_zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _alert_message(a: Alert) -> rpb.Alert:
    return rpb.Alert(
        id=a.id,
        name=a.name,
        state=a.state.value,
        severity=a.severity,
        labels=a.labels,
        summary=a.summary,
        started_at_unix=a.started_at,
        resolved_at_unix=a.resolved_at,
        acknowledged=bool(a.acknowledged_by),
        acknowledged_by=a.acknowledged_by,
    )


class RouterAdminServicer(rpb_grpc.RouterAdminServicer):
    def __init__(
        self, core: RouterCore, alerts: Callable[[], AlertService | None] = lambda: None
    ) -> None:
        self.core = core
        self.alerts = alerts

    def _service(self) -> AlertService:
        service = self.alerts()
        if service is None:
            raise RouteError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "alerting is disabled (alerting.enabled: false)",
            )
        return service

    async def ListExperiments(
        self, request: rpb.ListExperimentsRequest, context: Any
    ) -> rpb.ListExperimentsResponse:
        response = rpb.ListExperimentsResponse()
        for task, e in self.core.experiments():
            in_force = self.core.policy.in_force(e)
            phase = in_force.phase
            item = response.experiments.add(
                name=e.name,
                task=TASK_ENUMS[task],
                seed=e.seed,
                coverage=in_force.coverage,
                coverage_source=in_force.source,
                rollout_status=phase.status if phase else "",
                rollout_paused=bool(phase and phase.paused),
                phases=await self.core.phases(e.name),
            )
            for arm in e.arms:
                item.arms.add(name=arm.name, model=arm.model, weight=arm.weight)
            if e.shadow:
                item.shadow_model, item.shadow_percent = e.shadow.model, e.shadow.percent
        return response

    @grpc_errors
    async def GetAssignment(
        self, request: rpb.GetAssignmentRequest, context: Any
    ) -> rpb.GetAssignmentResponse:
        task = TASKS.get(request.task)
        if task is None:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, "task is required")
        if len(request.user_ids) > MAX_ASSIGNMENTS:
            raise RouteError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.user_ids)} user ids; ask for at most {MAX_ASSIGNMENTS} at a time",
            )
        e = self.core.experiment_for(task)
        if e is None:
            raise RouteError(grpc.StatusCode.NOT_FOUND, f"the {task} route runs no experiment")
        response = rpb.GetAssignmentResponse(coverage=self.core.policy.in_force(e).coverage)
        for user in request.user_ids:
            a = self.core.assignment(task, user)
            response.assignments.add(
                user_id=user,
                experiment=e.name,
                arm=a.arm if a else "",
                model=a.model if a else "",
            )
        return response

    async def GetQualityReport(
        self, request: rpb.GetQualityReportRequest, context: Any
    ) -> rpb.GetQualityReportResponse:
        response = rpb.GetQualityReportResponse()
        for model, check, total, failed, rate, recent in self.core.quality.rows(request.model):
            response.checks.add(
                model=model,
                check=check,
                total=total,
                failed=failed,
                pass_rate=rate,
                recent_pass_rate=recent,
            )
        if self.core.anomalies is not None:
            for a in self.core.anomalies.anomalies:
                if not request.model or a.model == request.model:
                    response.anomalies.add(
                        model=a.model, signal=a.signal, value=a.value, zscore=a.zscore, at_unix=a.at
                    )
        stored = await self.core.outcome_trends(request.model)
        for t in [*(self.core.trends.series(request.model) if self.core.trends else []), *stored]:
            series = response.trends.add(
                model=t.model,
                metric=t.metric,
                bucket_seconds=t.bucket_seconds,
                direction=t.direction,
                slope_per_hour=t.slope_per_hour,
                relative_change=t.relative_change,
            )
            for start, value, count in t.points:
                series.points.add(start_unix=start, value=value, count=count)
        for (primary, shadow), s in sorted(self.core.shadow.stats.items()):
            response.shadow.add(
                primary_model=primary,
                shadow_model=shadow,
                compared=s.compared,
                failed=s.failed,
                label_agreement=_nan_to_zero(s.mean("label_agreement")),
                embedding_cosine=_nan_to_zero(s.mean("embedding_cosine")),
                text_similarity=_nan_to_zero(s.mean("text_similarity")),
            )
        return response

    @grpc_errors
    async def GetExperimentReport(
        self, request: rpb.GetExperimentReportRequest, context: Any
    ) -> rpb.GetExperimentReportResponse:
        if not request.experiment:
            raise RouteError(
                grpc.StatusCode.INVALID_ARGUMENT, "experiment is required (see ListExperiments)"
            )
        settings = self.core.experiment(request.experiment)
        if settings is None:
            raise RouteError(
                grpc.StatusCode.NOT_FOUND,
                f"no experiment {request.experiment!r} in the configuration",
            )
        seed = request.seed or settings.seed
        if seed != settings.seed:
            stored = await self.core.phases(settings.name)
            if seed not in stored:
                known = ", ".join([settings.seed, *(p for p in stored if p != settings.seed)])
                raise RouteError(
                    grpc.StatusCode.NOT_FOUND,
                    f"experiment {settings.name!r} has no phase with seed {seed!r}; its "
                    f"phases: {known} (the first is the current one)",
                )
        if request.correction not in ("", "holm", "bh"):
            raise RouteError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"correction must be holm or bh, got {request.correction!r}",
            )
        correction: Correction = "bh" if request.correction == "bh" else "holm"
        doc, html = await self.core.experiment_document(
            settings, seed, request.segment, correction, request.html
        )
        phase = self.core.policy.rollout.phase(settings.name, seed)
        rolled_back = phase is not None and phase.status == "rolled_back"
        return report_response(doc, settings, rolled_back, seed == settings.seed, html)

    @grpc_errors
    async def ListAlerts(
        self, request: rpb.ListAlertsRequest, context: Any
    ) -> rpb.ListAlertsResponse:
        if request.limit < 0:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, "limit must be 0 (all) or positive")
        alerts = self._service().list(request.include_resolved, request.limit)
        return rpb.ListAlertsResponse(alerts=[_alert_message(a) for a in alerts])

    @grpc_errors
    async def AcknowledgeAlert(
        self, request: rpb.AcknowledgeAlertRequest, context: Any
    ) -> rpb.AcknowledgeAlertResponse:
        if not request.id:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, "id is required (from ListAlerts)")
        try:
            alert = self._service().acknowledge(request.id, request.by)
        except AlreadyAcknowledged as exc:
            raise RouteError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        if alert is None:
            raise RouteError(grpc.StatusCode.NOT_FOUND, f"no alert {request.id!r} in the history")
        return rpb.AcknowledgeAlertResponse(alert=_alert_message(alert))
