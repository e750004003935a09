"""Router overhead: the same request direct to the model server, through a bare grpc.aio
pass-through proxy, and through the router, at concurrency 1 and 16, in one run.

    python -m benchmarks.router --models models --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import yaml

from benchmarks.common import (
    Load,
    Rounds,
    added_ratio,
    closed_loop,
    machine,
    merge,
    ratio_cell,
    write_section,
)
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from tests.support.audio import wav
from tests.support.k8s_checks import trace_sampling
from tests.support.oip import infer_request
from tests.support.processes import ServerProcess, free_port, modelserver_args, router_args

CONCURRENCY = (1, 16)
TELEMETRY = ("router+telemetry", "router+telemetry, all traces")
# A second, identical plain router: how far two routers that should agree differ in one run.
PATHS = ("direct", "proxy", "router", "router, identical copy", *TELEMETRY)
# Several processes per router path, measured in turn: two identical router processes can
# differ in latency by several percent for as long as they live (where the scheduler puts
# them), as much as the telemetry effect this measures; a path pools its instances.
INSTANCES = 3
# `--baseline REV`: plain routers of an earlier commit, measured in the same rounds.
BASELINE = "router @ baseline"
# Every path runs twice in every position of the rotating order, and on every instance four
# times; enough rounds to resample for an interval.
ROUNDS = 12
BALANCING = "round_robin"
# Every call carries a deadline, as production callers do; the proxy forwards it.
DEADLINE_S = 5.0
ROOT = Path(__file__).resolve().parents[1]


def shipped_sampling() -> dict[str, str]:
    """The trace sampler the Kubernetes manifests set (checked alike in every Deployment by
    tests/k8s): the benchmark measures what is deployed."""
    docs = yaml.safe_load_all((ROOT / "k8s" / "base" / "router.yaml").read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    return trace_sampling(deployment)


def _wait_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def oip_load(address: str, clip: bytes, c: int, seconds: float) -> Load:
    request = infer_request("wav2vec2", audio=clip, task="embed")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> int:
            await stub.ModelInfer(request, timeout=DEADLINE_S)
            return 1

        return await closed_loop(call, c, seconds, warmup=20)


async def router_load(address: str, clip: bytes, c: int, seconds: float) -> Load:
    request = rpb.ProcessRequest(audio=clip, task=rpb.TASK_EMBED, user_id="bench")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpb_grpc.AudioRouterStub(channel)

        async def call() -> int:
            await stub.Process(request, timeout=DEADLINE_S)
            return 1

        return await closed_loop(call, c, seconds, warmup=20)


def _router_config(path: Path, model_port: int, metrics_port: int | None) -> Path:
    config: dict[str, Any] = {
        "models": {"wav2vec2": {"endpoints": [f"127.0.0.1:{model_port}"], "balancing": BALANCING}},
        "routes": {"embed": {"primary": "wav2vec2"}},
    }
    if metrics_port is not None:
        config["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": metrics_port}
    path.write_text(yaml.safe_dump(config))
    return path


def _start_routers(
    d: Path, model_port: int, sink_port: int, baseline: Path | None
) -> dict[str, list[ServerProcess]]:
    """INSTANCES router processes per router path, started. Telemetry on: Prometheus
    metrics, and traces and metrics sent by OTLP to a sink; traces sampled as the Kubernetes
    manifests ship, and, for the last path, all of them. With `baseline` (another checkout),
    plain routers of that code too."""
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    setups: dict[str, tuple[bool, dict[str, str]]] = {
        "router": (False, {}),
        "router, identical copy": (False, {}),
        "router+telemetry": (True, otel | shipped_sampling()),
        "router+telemetry, all traces": (
            True,
            otel | {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
        ),
    }
    routers: dict[str, list[ServerProcess]] = {}
    for n, (path, (metrics, env)) in enumerate(setups.items()):
        routers[path] = []
        for i in range(INSTANCES):
            port, name = free_port(), f"r{n}-{i}"
            config = _router_config(
                d / f"{name}.yaml", model_port, free_port() if metrics else None
            )
            process = ServerProcess(router_args(config, port), d / f"{name}.log", port)
            routers[path].append(process.start(env=env))
    if baseline is not None:
        routers[BASELINE] = []
        for i in range(INSTANCES):
            port, name = free_port(), f"base-{i}"
            config = _router_config(d / f"{name}.yaml", model_port, None)
            process = ServerProcess(router_args(config, port), d / f"{name}.log", port)
            routers[BASELINE].append(process.start(cwd=baseline))
    return routers


def run(models: Path, seconds: float, baseline: Path | None = None) -> Rounds:
    """Every path's rounds at every concurrency, in the order they ran."""
    clip = wav(0.5)
    measured: Rounds = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        mport, pport, sink_port = free_port(), free_port(), free_port()
        model = ServerProcess(
            modelserver_args(models / "wav2vec2", mport), d / "m.log", mport
        ).start()
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.proxy",
                "--listen",
                f"127.0.0.1:{pport}",
                "--upstream",
                f"127.0.0.1:{mport}",
            ]
        )
        sink = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.otlp_sink", "--port", str(sink_port)]
        )
        routers = _start_routers(d, mport, sink_port, baseline)
        paths = (*PATHS, BASELINE) if baseline is not None else PATHS
        try:
            model.wait_status()
            for instances in routers.values():
                for process in instances:
                    process.wait_status()
            _wait_port(pport)
            _wait_port(sink_port)
            cells: dict[str, list[Callable[[int, float], Awaitable[Load]]]] = {
                "direct": [lambda c, t: oip_load(model.address, clip, c, t)],
                "proxy": [lambda c, t: oip_load(f"127.0.0.1:{pport}", clip, c, t)],
            }
            for path, instances in routers.items():
                cells[path] = [
                    lambda c, t, a=process.address: router_load(a, clip, c, t)
                    for process in instances
                ]
            for c in CONCURRENCY:
                rounds: dict[str, list[Load]] = {path: [] for path in cells}
                for i in range(ROUNDS):
                    # The order rotates: whichever path ran first in every round would
                    # carry that position's bias alone.
                    order = paths[i % len(paths) :] + paths[: i % len(paths)]
                    for path in order:
                        run_cell = cells[path][i % len(cells[path])]
                        rounds[path].append(asyncio.run(run_cell(c, seconds / ROUNDS)))
                for path, loads in rounds.items():
                    measured[(path, c)] = loads
                    r = merge(loads)
                    line = f"{path:28s} c={c:2d} {r.throughput:7.1f}/s"
                    print(f"{line} p50 {r.p50_ms:6.2f} ms p99 {r.p99_ms:6.2f} ms", flush=True)
        finally:
            for instances in routers.values():
                for process in instances:
                    process.stop()
            for p in (proxy, sink):
                p.terminate()
                p.wait(10)
            model.stop()
    return measured


# Telemetry off: both plain router paths pooled, every plain process there is.
TELEMETRY_OFF = ("router", "router, identical copy")


def table(rounds: Rounds) -> str:
    results = {key: merge(loads) for key, loads in rounds.items()}
    lines = [
        "| path | concurrency | req/s | p50 ms | p99 ms | added p50 ms (vs direct) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        direct = results[("direct", c)]
        for path in PATHS:
            r = results[(path, c)]
            added = r.p50_ms - direct.p50_ms
            cells = [path, str(c), f"{r.throughput:.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}"]
            lines.append("| " + " | ".join([*cells, f"{added:+.2f}"]) + " |")
    lines += [
        "",
        "Ratios, same run:",
        "",
        "| measure | router / bare proxy | goal |",
        "| --- | ---: | --- |",
    ]
    for c in CONCURRENCY:
        added = added_ratio(rounds, c, ("router",), ("proxy",))
        lines.append(f"| added p50 latency, c={c} | **{added:.2f}** | <= 1.2 |")
    ratio = results[("router", 16)].throughput / results[("proxy", 16)].throughput
    lines.append(f"| throughput, c=16 | **{ratio:.2f}** | >= 0.8 |")
    sampling = shipped_sampling()
    shipped = f"{sampling['OTEL_TRACES_SAMPLER']} {sampling['OTEL_TRACES_SAMPLER_ARG']}"
    lines += [
        "",
        f"| measure | telemetry on / off, traces sampled as shipped ({shipped}) "
        "| telemetry on / off, all traces | noise floor: identical copy / router | goal |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for c in CONCURRENCY:
        cells = [ratio_cell(rounds, c, (path,), TELEMETRY_OFF) for path in TELEMETRY]
        cells.append(ratio_cell(rounds, c, ("router, identical copy",), ("router",)))
        lines.append(f"| router's added p50 latency, c={c} | {' | '.join(cells)} | <= 1.10 |")
    off = merge([x for path in TELEMETRY_OFF for x in rounds[(path, 16)]])
    row = " | ".join(
        f"**{results[(path, 16)].throughput / off.throughput:.2f}**" for path in TELEMETRY
    )
    lines.append(f"| throughput, c=16 | {row} | | |")
    lines += [
        "",
        f"Telemetry off is both plain router paths pooled ({2 * INSTANCES} processes). In "
        "brackets: 95% bootstrap intervals over the rounds. The noise floor compares two "
        "groups of identical plain routers on the same measure: how far apart two things "
        "that should agree read in this run.",
    ]
    return "\n".join(lines)


def baseline_table(rounds: Rounds, rev: str) -> str:
    """This commit's router against `rev`'s, measured in the same rounds."""
    lines = [
        f"| measure | router / router @ {rev} | noise floor: identical copy / router | "
        f"router / proxy | router @ {rev} / proxy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        cells = [
            ratio_cell(rounds, c, TELEMETRY_OFF, (BASELINE,)),
            ratio_cell(rounds, c, ("router, identical copy",), ("router",)),
            ratio_cell(rounds, c, TELEMETRY_OFF, ("proxy",)),
            ratio_cell(rounds, c, (BASELINE,), ("proxy",)),
        ]
        lines.append(f"| added p50 latency, c={c} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _worktree(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
        check=True,
        capture_output=True,
    )
    return into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--seconds", type=float, default=24.0, help="per cell")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run plain routers of this commit (a git worktree) in the same rounds, and "
        "write their comparison instead of the usual section",
    )
    args = parser.parse_args()
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            checkout = _worktree(args.baseline, Path(tmp) / "baseline")
            try:
                results = run(args.models, args.seconds, checkout)
            finally:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)],
                    check=False,
                )
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        body = "\n".join(
            [
                f"## Router: this commit against {args.baseline}",
                "",
                f"`python -m benchmarks.router --baseline {args.baseline}` at {head}, "
                f"{time.strftime('%Y-%m-%d')}, {machine()}. The paths of the section above, "
                f"plus {INSTANCES} plain routers of {args.baseline} (a git worktree), every path "
                f"in the same {ROUNDS} interleaved rounds of {args.seconds:g} s per cell. "
                "Ratios of added p50 latency (against direct), with 95% bootstrap intervals "
                "over the rounds; this commit's routers are both plain router paths pooled.",
                "",
                baseline_table(results, args.baseline),
            ]
        )
        write_section(args.out, "router-baseline", body)
        print(body)
        return
    results = run(args.models, args.seconds)
    body = "\n".join(
        [
            "## Router: added latency against direct calls and a bare proxy",
            "",
            f"`make bench` (`python -m benchmarks.router`), {time.strftime('%Y-%m-%d')},",
            f"{machine()}. On loopback: a wav2vec2 model server, a bare grpc.aio pass-through",
            "proxy (`benchmarks/proxy.py`: bytes in, bytes out), the router (one route, no",
            "experiment) and an identical copy of it, and two routers with telemetry on",
            "(Prometheus metrics; OTLP traces and metrics to a discarding sink,",
            "`benchmarks/otlp_sink.py`): one samples traces as `k8s/base` ships them",
            "(`OTEL_TRACES_SAMPLER*`), one records every trace.",
            "The client sends the same 0.5 s WAV clip for",
            f"`embed` closed-loop, {args.seconds:g} s per cell in {ROUNDS} interleaved rounds",
            "whose order rotates, so every path runs equally often in every position: OIP",
            "ModelInfer direct and through the proxy; AudioRouter/Process to the routers. Each",
            f"router path is {INSTANCES} processes, one per round in turn, pooled: two identical",
            "router processes can differ by several percent for as long as they live.",
            "",
            table(results),
        ]
    )
    write_section(args.out, "router", body)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
