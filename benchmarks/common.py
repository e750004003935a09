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


Rounds = dict[tuple[str, int], list[Load]]
"""Every path's rounds at every concurrency, in the order they ran."""

# Ratios' intervals: the rounds resampled with replacement, the same rounds
# for every path (rounds that ran side by side share the machine's state).
BOOTSTRAP_DRAWS = 2000


def _p50(loads: list[Load]) -> float:
    return float(np.percentile(np.concatenate([x.latencies_ms for x in loads]), 50))


def added_ratio(rounds: Rounds, c: int, top: tuple[str, ...], bottom: tuple[str, ...]) -> float:
    """Added p50 latency (against direct) of the paths `top` pooled, over that of `bottom`."""
    direct = _p50(rounds[("direct", c)])
    num = _p50([x for path in top for x in rounds[(path, c)]]) - direct
    return num / max(_p50([x for path in bottom for x in rounds[(path, c)]]) - direct, 1e-9)


def ratio_cell(rounds: Rounds, c: int, top: tuple[str, ...], bottom: tuple[str, ...]) -> str:
    """The ratio in bold and its 95% bootstrap interval over rounds."""
    rng = np.random.default_rng(0)
    n = len(rounds[("direct", c)])
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        pick = rng.integers(0, n, n)
        sample = {key: [loads[i] for i in pick] for key, loads in rounds.items() if key[1] == c}
        draws.append(added_ratio(sample, c, top, bottom))
    low, high = np.percentile(draws, [2.5, 97.5])
    return f"**{added_ratio(rounds, c, top, bottom):.2f}** ({low:.2f}-{high:.2f})"
