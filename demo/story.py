"""The demo's narrative: start, compare offline, split traffic while ramping, lose the primary,
then read the verdict, the quality report and the alerts back from the router."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

from demo.stack import Stack
from demo.traffic import TrafficStats, simulate_users
from evaluation.compare import CompareOptions, compare
from evaluation.manifest import load_manifest
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from router.config import load_config

EXPERIMENT = "embed-gama"
STEPS = 7


def step(n: int, title: str) -> None:
    print(f"\n== {n}/{STEPS} {title}", flush=True)


async def _coverage(admin: rpb_grpc.RouterAdminStub) -> float:
    listing = await admin.ListExperiments(rpb.ListExperimentsRequest(), timeout=2)
    return next((e.coverage for e in listing.experiments if e.name == EXPERIMENT), 0.0)


async def _phase_requests(admin: rpb_grpc.RouterAdminStub, expected: int) -> int:
    """The current phase's requests in the results store, once the router's writer has
    caught up with `expected` (it flushes every 0.5 s); what it says then, if it never does."""
    count = 0
    for _ in range(50):
        report = await admin.GetExperimentReport(
            rpb.GetExperimentReportRequest(experiment=EXPERIMENT), timeout=5
        )
        count = int(sum(a.count for a in report.arms))
        if count >= expected:
            return count
        await asyncio.sleep(0.2)
    return count


async def _restart_router(stack: Stack, admin: rpb_grpc.RouterAdminStub, expected: int) -> None:
    before = await _phase_requests(admin, expected)
    print(f"  >>> restarting the router (SIGTERM): the phase holds {before} requests", flush=True)
    router = stack.processes["router"]
    router.terminate()
    assert router.proc is not None
    await asyncio.to_thread(router.proc.wait, 30)
    router.start()
    await asyncio.to_thread(router.wait_serving, time.monotonic() + 60)
    after = await _phase_requests(admin, before)
    print(
        f"  router back: the phase still holds {after} requests "
        f"({'nothing lost' if after == before else 'LOST ' + str(before - after)}; "
        "they live in the results store, not in the router)",
        flush=True,
    )


async def _online(stack: Stack, clips: list[tuple[bytes, str]], seconds: float) -> TrafficStats:
    """Traffic for `seconds` of serving time: the router restarts after a quarter of it and the
    primary is killed at half of it. The restart's own time is not counted, so on a slow machine
    every event still happens, in order, with traffic on both sides of it."""
    stats = TrafficStats()
    stop = asyncio.Event()
    router = stack.processes["router"].address
    traffic = asyncio.create_task(simulate_users(router, clips, stop, stats))
    start = time.monotonic()
    paused = 0.0
    killed = restarted = False
    async with grpc.aio.insecure_channel(router) as channel:
        admin = rpb_grpc.RouterAdminStub(channel)
        while not killed or time.monotonic() - start - paused < seconds:
            await asyncio.sleep(2)
            served = time.monotonic() - start - paused
            if not restarted and served >= seconds / 4:
                # Users wait while the only replica restarts (a fleet would keep serving).
                began = time.monotonic()
                stop.set()
                await traffic
                await _restart_router(stack, admin, stats.in_experiment)
                restarted = True
                stop = asyncio.Event()
                traffic = asyncio.create_task(simulate_users(router, clips, stop, stats, seed=1))
                paused += time.monotonic() - began
                continue
            if restarted and not killed and served >= seconds / 2:
                print("  >>> killing the primary, wav2vec2, with SIGKILL", flush=True)
                await asyncio.to_thread(stack.processes["wav2vec2"].kill)
                killed = True
            arms = ", ".join(f"{arm} {n}" for arm, n in sorted(stats.arms.items()))
            print(
                f"  t={served:4.0f}s  requests {stats.sent:5d}  "
                f"failed {stats.failures}  coverage {await _coverage(admin):4.0%}  "
                f"fallbacks {stats.fallbacks:4d}  [{arms}]",
                flush=True,
            )
    stop.set()
    await traffic
    return stats


async def _streamed_answer(stack: Stack, clip: bytes) -> None:
    """One describe answer through ProcessStream, printed piece by piece as GAMA decodes it."""
    router = stack.processes["router"].address
    started = time.monotonic()
    first = None
    async with grpc.aio.insecure_channel(router) as channel:
        stub = rpb_grpc.AudioRouterStub(channel)
        request = rpb.ProcessRequest(
            audio=clip, task=rpb.TASK_DESCRIBE, prompt="What do you hear?", user_id="demo"
        )
        print("  answer: ", end="", flush=True)
        async for message in stub.ProcessStream(request, timeout=30):
            if message.HasField("result"):
                r = message.result
                print(
                    f"\n  first piece after {(first or started) - started:.3f}s, whole answer "
                    f"after {time.monotonic() - started:.3f}s; {r.usage.output_tokens} tokens "
                    f"({r.usage.finish_reason}), served by {r.route.model}, quality "
                    f"{'passed' if r.quality.passed else 'failed'}"
                )
            else:
                first = first or time.monotonic()
                print(message.text, end="", flush=True)


def _results_page(stack: Stack) -> str:
    """The experiment's results page, written by the command an operator types."""
    page = stack.out / "results.html"
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "report", "--config", str(stack.config_path),
         "--experiment", EXPERIMENT, "--html", str(page)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode:
        return f"results page not written: {done.stderr.strip()}"
    return f"results page (verdict, effects, segments, ramp): {page}"


def _rollout_history(stack: Stack) -> None:
    """The decisions behind the coverage the router served: the controller's, from its state."""
    from router.rollout.state import StateError
    from router.rollout.store import FileStore

    try:
        state = FileStore(stack.rollout_state).read()
    except StateError as exc:
        print(f"  rollout state unreadable: {exc}")
        return
    print(f"  rollout controller decisions ({stack.rollout_state}):")
    for d in state.history:
        at = datetime.fromtimestamp(d.at, UTC).strftime("%H:%M:%S")
        counts = ", ".join(f"{arm} {n}" for arm, n in sorted(d.counts.items()))
        print(
            f"    {at} {d.action:8s} coverage {d.from_coverage:4.0%} -> {d.to_coverage:4.0%}"
            + (f"  (verdict {d.verdict}; {counts})" if d.verdict else "")
        )
    if not state.history:
        print("    (none yet)")


async def _results(stack: Stack) -> str:
    async with grpc.aio.insecure_channel(stack.processes["router"].address) as channel:
        admin = rpb_grpc.RouterAdminStub(channel)
        report = await admin.GetExperimentReport(
            rpb.GetExperimentReportRequest(experiment=EXPERIMENT), timeout=5
        )
        print(f"  experiment {EXPERIMENT}: {report.verdict}")
        for reason in report.reasons:
            print(f"    - {reason}")
        for arm in report.arms:
            print(f"    arm {arm.name} ({arm.model}): {arm.count} requests")
        for c in report.comparisons:
            if c.metric == "latency_ms":
                print(
                    f"    latency {c.arm} - control: {c.difference:+.1f} ms "
                    f"(always-valid interval [{c.cs_low:+.1f}, {c.cs_high:+.1f}])"
                )
            if c.metric == "accepted":
                print(
                    f"    accepted by users (outcomes they reported): {c.arm} "
                    f"{c.arm_mean:.0%} vs control {c.control_mean:.0%} "
                    f"(always-valid interval [{c.cs_low:+.2f}, {c.cs_high:+.2f}])"
                )
        quality = await admin.GetQualityReport(rpb.GetQualityReportRequest(), timeout=5)
        print("  quality checks on every output:")
        for model in sorted({c.model for c in quality.checks}):
            checks = [c for c in quality.checks if c.model == model]
            failing = [f"{c.check} {c.failed}/{c.total}" for c in checks if c.failed]
            print(
                f"    {model:9s} {len(checks)} checks on {max(c.total for c in checks)} outputs; "
                f"failures: {', '.join(failing) or 'none'}"
            )
        for shadow in quality.shadow:
            print(
                f"    shadow {shadow.shadow_model} vs {shadow.primary_model}: {shadow.compared} "
                f"compared, embedding cosine {shadow.embedding_cosine:.2f}"
            )
        for trend in quality.trends:
            if trend.metric == "fallback_rate" and trend.points:
                print(f"    trend: {trend.model} fallback rate {trend.direction}")
        alerts = await admin.ListAlerts(
            rpb.ListAlertsRequest(include_resolved=True, limit=20), timeout=5
        )
        print("  alert history (newest first):")
        for alert in alerts.alerts:
            at = datetime.fromtimestamp(alert.started_at_unix, UTC).strftime("%H:%M:%S")
            print(f"    {at} {alert.state:8s} {alert.severity:8s} {alert.name}: {alert.summary}")
        if not alerts.alerts:
            print("    (none)")
        return str(report.verdict)


async def run_story(stack: Stack, dataset: Path, seconds: float) -> int:
    manifest = load_manifest(dataset)
    step(1, f"Built: tiny models in {stack.models}/, {len(manifest.clips)} labelled clips")
    step(2, "Starting two model servers, the router and its rollout controller (local processes)")
    started = time.monotonic()
    await asyncio.to_thread(stack.start)
    for name, p in stack.processes.items():
        print(f"  {name:9s} on {p.address}  log {p.log}")
    print(f"  ready in {time.monotonic() - started:.1f}s; router configuration {stack.config_path}")

    step(3, "Offline comparison: every clip through both models (embed)")
    config = load_config(stack.config_path)
    report = await asyncio.to_thread(
        compare,
        CompareOptions(
            manifest=manifest,
            models=["gama", "wav2vec2"],
            task="embed",
            out=stack.out / "compare",
            endpoints={},
            config=config,
            fresh=True,
        ),
    )
    for name, summary in report["models"].items():
        latency = summary["latency_ms"]["client"]
        print(
            f"  {name:9s} kNN accuracy {summary['quality']['knn_accuracy']:.2f}  "
            f"p95 {latency['p95']:.1f} ms  peak RSS "
            f"{(summary['memory']['peak_rss_bytes'] or 0) / 2**20:.0f} MiB"
        )
    for comp in report["comparisons"]:
        print(f"  recommendation for {comp['model']}: {comp['recommendation']['verdict']}")
        for reason in comp["recommendation"]["reasons"]:
            print(f"    - {reason}")
    print("  (tiny models have random weights: the numbers show the machinery, not GAMA)")

    step(4, "GAMA streams its answer (AudioRouter/ProcessStream, continuous batching)")
    await _streamed_answer(stack, manifest.audio_path(manifest.clips[0]).read_bytes())

    step(
        5,
        f"Online A/B for {seconds:.0f}s: 300 simulated users reporting outcomes, GAMA ramping "
        "5% -> 100%",
    )
    clips = [
        (manifest.audio_path(c).read_bytes(), c.labels[0] if c.labels else c.id)
        for c in manifest.clips
    ]
    stats = await _online(stack, clips, seconds)
    print(
        f"  {stats.sent} requests: {stats.ok} answered, {stats.failures} failed "
        f"{dict(stats.failed) if stats.failed else ''}; {stats.fallbacks} served by a fallback"
    )
    reported = ", ".join(
        f"{arm} {stats.accepted[arm]}/{n}" for arm, n in sorted(stats.reported.items())
    )
    print(f"  users reported `accepted` (RecordOutcome): {reported or 'none'}")
    print(f"  served by: {dict(stats.models)}")

    await asyncio.sleep(1.5)  # one more alert evaluation after the traffic
    step(6, "What the router and the rollout controller say")
    await _results(stack)
    _rollout_history(stack)

    step(7, "Reports")
    print(f"  offline comparison: {stack.out / 'compare' / 'report.html'} (and .md, .json)")
    print(f"  {await asyncio.to_thread(_results_page, stack)}")
    print(f"  logs: {stack.out / 'logs'}; alert history: {stack.out / 'alerts.sqlite'}")
    if stats.failures:
        print(f"  FAILED: {stats.failures} requests failed during the failover")
        return 1
    print("  zero failed requests through the primary's loss")
    return 0
