"""Closed-loop load generation, percentiles, machine description, and the benchmarks page."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def merge(loads: list[Load]) -> Load:
    """One Load from several rounds of the same cell: pooled percentiles, summed rates."""
    ms = np.concatenate([np.asarray(x.latencies_ms) for x in loads])
    return Load(
        sum(x.requests for x in loads),
        sum(x.seconds for x in loads),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        float(np.average([x.mean_batch for x in loads], weights=[x.requests for x in loads])),
        ms.tolist(),
    )


async def closed_loop(
    call: Callable[[], Awaitable[int]], concurrency: int, seconds: float, warmup: int = 5
) -> Load:
    """`concurrency` clients each send the next request as soon as the last one returns.

    `call` returns the batch size the server reports for the request.
    """
    for _ in range(warmup):
        await call()
    latencies: list[float] = []
    batches: list[int] = []
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            batches.append(await call())
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return Load(
        len(ms),
        elapsed,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        float(np.mean(batches)),
        ms.tolist(),
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def write_section(page: Path, key: str, body: str) -> None:
    """Replace (or append) the section between `<!-- bench:key -->` markers."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)
