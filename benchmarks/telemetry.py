"""Where the router's telemetry cost goes: four routers on one model server (plain, metrics
only, tracing only, both), called in interleaved rounds at concurrency 1.

    python -m benchmarks.telemetry --models models [--sampler-ratio 0.1]

Tracing exports by OTLP to a discarding sink (benchmarks/otlp_sink.py).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import yaml

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from tests.support.audio import wav
from tests.support.processes import ServerProcess, free_port, modelserver_args, router_args

ROUNDS = 6


async def _latencies(address: str, seconds: float) -> list[float]:
    request = rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_EMBED)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpb_grpc.AudioRouterStub(channel)
        for _ in range(20):
            await stub.Process(request, timeout=5)
        out: list[float] = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await stub.Process(request, timeout=5)
            out.append((time.perf_counter() - t0) * 1000)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=9.0, help="per router, split into rounds")
    parser.add_argument(
        "--sampler-ratio", type=float, default=None, help="parent-based root sampling"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        mport, sink_port = free_port(), free_port()
        model = ServerProcess(
            modelserver_args(args.models / "wav2vec2", mport), d / "m.log", mport
        ).start()
        sink = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.otlp_sink", "--port", str(sink_port)]
        )
        otlp = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
        if args.sampler_ratio is not None:
            otlp |= {
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(args.sampler_ratio),
            }
        variants = {
            "plain": (False, None),
            "metrics": (True, None),
            "tracing": (False, otlp | {"OTEL_METRICS_EXPORTER": "none"}),
            "both": (True, otlp),
        }
        routers: dict[str, ServerProcess] = {}
        for name, (metrics, env) in variants.items():
            config: dict[str, Any] = {
                "models": {"wav2vec2": {"endpoints": [f"127.0.0.1:{mport}"]}},
                "routes": {"embed": {"primary": "wav2vec2"}},
            }
            if metrics:
                config["telemetry"] = {
                    "prometheus_host": "127.0.0.1",
                    "prometheus_port": free_port(),
                }
            (d / f"{name}.yaml").write_text(yaml.safe_dump(config))
            port = free_port()
            routers[name] = ServerProcess(
                router_args(d / f"{name}.yaml", port), d / f"{name}.log", port
            ).start(env=env)
        try:
            model.wait_status()
            for router in routers.values():
                router.wait_status()
            samples: dict[str, list[float]] = {name: [] for name in routers}
            cpu_s = dict.fromkeys(routers, 0.0)
            for _ in range(ROUNDS):
                for name, router in routers.items():
                    assert router.proc is not None
                    proc = psutil.Process(router.proc.pid)
                    before = sum(proc.cpu_times()[:2])
                    samples[name] += asyncio.run(_latencies(router.address, args.seconds / ROUNDS))
                    cpu_s[name] += sum(proc.cpu_times()[:2]) - before
        finally:
            for router in routers.values():
                router.stop()
            sink.terminate()
            sink.wait(10)
            model.stop()
    plain = float(np.median(samples["plain"]))
    # Router CPU per request (warm-up calls included in the count) is far steadier than
    # latency on a shared machine, and is what telemetry adds to the request path.
    plain_cpu = cpu_s["plain"] / (len(samples["plain"]) + 20 * ROUNDS) * 1e6
    print("| router | p50 ms | p99 ms | p50 over plain ms | CPU us/request | over plain us |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in samples.items():
        p50, p99 = float(np.median(values)), float(np.percentile(values, 99))
        cpu = cpu_s[name] / (len(values) + 20 * ROUNDS) * 1e6
        cells = f"{p50:.3f} | {p99:.2f} | {p50 - plain:+.3f} | {cpu:.0f} | {cpu - plain_cpu:+.0f}"
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
