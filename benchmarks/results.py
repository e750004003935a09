"""The results store's cost and capacity, in one run:

- the router's added p50 latency with the store on (SQLite, PostgreSQL) against off, at
  concurrency 1 and 16 (same route, no experiment: every routed request is a row);
- PostgreSQL ingest in events per second for one writer (one replica), batches as the writer
  sends them;
- the report's query time for one phase of 10^5, 10^6 and 10^7 exposures (30% with an outcome),
  and CUPED's sums over it (from the writers' covariates, and from the events).

    python -m benchmarks.results --models models --out docs/benchmarks.md
    python -m benchmarks.results --store-only   # the last two only (no model server)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text

from benchmarks.common import Load, Rounds, machine, merge, ratio_cell, write_section
from benchmarks.router import oip_load, router_load
from router.results.covariates import DAY
from router.results.cuped_query import cuped_sums, cuped_sums_from_events
from router.results.query import phase_statistics
from router.results.store import Exposure, ResultsStore
from tests.support.audio import wav
from tests.support.postgres import Postgres
from tests.support.processes import ServerProcess, free_port, modelserver_args, router_args

CONCURRENCY = (1, 16)
PATHS = ("direct", "store off", "store off, identical copy", "store on: SQLite",
         "store on: PostgreSQL")  # fmt: skip
# Two identical router processes differ by several percent for as long as they live (where
# the scheduler puts them): each router path is INSTANCES processes, one per round in turn,
# and an identical copy of the storeless router reads the noise floor.
INSTANCES = 2
ROUNDS = 8
DEADLINE_S = 5.0
SIZES = (10**5, 10**6, 10**7)
LOOKBACK_DAYS = 14.0


def _router(d: Path, name: str, model_port: int, results: str | None) -> ServerProcess:
    config: dict[str, Any] = {
        "models": {"wav2vec2": {"endpoints": [f"127.0.0.1:{model_port}"]}},
        "routes": {"embed": {"primary": "wav2vec2"}},
    }
    if results is not None:
        config["results"] = {"url": results}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    return ServerProcess(router_args(path, port), d / f"{name}.log", port).start()


def overhead(models: Path, postgres: Postgres, seconds: float) -> Rounds:
    clip = wav(0.5)
    out: Rounds = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        mport = free_port()
        model = ServerProcess(modelserver_args(models / "wav2vec2", mport), d / "m.log", mport)
        model.start()
        stores: dict[str, str | None] = {
            "store off": None,
            "store off, identical copy": None,
            "store on: SQLite": f"sqlite:///{d / 'r.sqlite'}",
            "store on: PostgreSQL": postgres.url,
        }
        routers = {
            path: [_router(d, f"r{n}-{i}", mport, url) for i in range(INSTANCES)]
            for n, (path, url) in enumerate(stores.items())
        }
        try:
            model.wait_status()
            for instances in routers.values():
                for r in instances:
                    r.wait_status()
            for c in CONCURRENCY:
                rounds: dict[str, list[Load]] = {p: [] for p in PATHS}
                for i in range(ROUNDS):
                    order = PATHS[i % len(PATHS) :] + PATHS[: i % len(PATHS)]
                    for path in order:
                        if path == "direct":
                            cell = oip_load(model.address, clip, c, seconds / ROUNDS)
                        else:
                            address = routers[path][i % INSTANCES].address
                            cell = router_load(address, clip, c, seconds / ROUNDS)
                        rounds[path].append(asyncio.run(cell))
                for path, loads in rounds.items():
                    out[(path, c)] = loads
                    r = merge(loads)
                    print(f"{path:22s} c={c:2d} p50 {r.p50_ms:6.2f} ms {r.throughput:7.1f}/s")
        finally:
            for instances in routers.values():
                for r in instances:
                    r.stop()
            model.stop()
    return out


def ingest(store: ResultsStore, seconds: float, batch: int = 1000) -> float:
    """Events per second one writer commits, in batches of `batch` (one transaction each)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rows = [
            Exposure(f"ingest-{n + i}", "ingest", "s1", "control" if i % 2 else "candidate",
                     "m", f"u{(n + i) % 5000}", time.time(), 12.5, False, False, False)
            for i in range(batch)
        ]  # fmt: skip
        store.write(rows, [])
        n += batch
    return n / (time.perf_counter() - t0)


def _fill(store: ResultsStore, experiment: str, n: int) -> None:
    """n exposures of one phase over n/20 users, 30% of them with an outcome, generated by
    PostgreSQL itself (generating them in Python would measure Python), and their rollup."""
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO exposures SELECT :e || g, :e, 's1', "
                "CASE WHEN hashint4(g / 20) % 2 = 0 THEN 'control' ELSE 'candidate' END, 'm', "
                "'u' || (g / 20), 0, 10 + random() * 5, random() < 0.01, random() < 0.02, "
                "false, 0, 0 FROM generate_series(1, :n) g"
            ),
            {"e": experiment, "n": n},
        )
        conn.execute(
            text(
                "INSERT INTO outcomes SELECT :e || g, 'accepted', (random() < 0.7)::int, 1 "
                "FROM generate_series(1, :n) g WHERE g % 10 < 3"
            ),
            {"e": experiment, "n": n},
        )


def _earlier(store: ResultsStore, experiment: str, n: int) -> None:
    """Half as many requests again by the same users an hour before the phase, outside any
    experiment, 30% with an outcome: what CUPED reads."""
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO exposures SELECT 'pre' || :e || g, '', '', '', 'm', 'u' || (g / 10), "
            "-3600, 10 + random() * 5, random() < 0.01, random() < 0.02, false, 0, 0 "
            "FROM generate_series(1, :n) g"), {"e": experiment, "n": n // 2})  # fmt: skip
        conn.execute(text(
            "INSERT INTO outcomes SELECT 'pre' || :e || g, 'accepted', "
            "(random() < 0.7)::int, 1 FROM generate_series(1, :n) g WHERE g % 10 < 3"),
            {"e": experiment, "n": n // 2})  # fmt: skip
        for table in ("exposures", "outcomes"):
            conn.execute(text(f"ANALYZE {table}"))
    # The writers keep the per-user rollup, CUPED's covariates included, as they write; rows
    # loaded in bulk get it rebuilt.
    store.rebuild(experiment, "s1", ["accepted"], LOOKBACK_DAYS * DAY)
    with store.engine.begin() as conn:
        for table in ("unit_requests", "unit_outcomes"):
            conn.execute(text(f"ANALYZE {table}"))


def _best(run: Callable[..., object], *args: object) -> float:
    """The best of three runs, in seconds."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def report_times(
    store: ResultsStore, sizes: tuple[int, ...], events_up_to: int = 10**6
) -> dict[int, tuple[float, int, float, float]]:
    """Per size: (best of three report query seconds, units found, the same for CUPED's sums
    from the rollup, and once from the events where the size is at most `events_up_to`
    (NaN above: about 45 s a time at 10^7))."""
    out = {}
    for n in sizes:
        experiment = f"size{n}"
        t0 = time.perf_counter()
        _fill(store, experiment, n)
        _earlier(store, experiment, n)
        print(f"loaded {n} exposures in {time.perf_counter() - t0:.1f} s", flush=True)
        plain = _best(phase_statistics, store, experiment, "s1", ["accepted"])
        units = sum(a.units for a in phase_statistics(store, experiment, "s1", []).values())
        cuped = _best(cuped_sums, store, experiment, "s1", ["accepted"], LOOKBACK_DAYS)
        events = math.nan
        if n <= events_up_to:
            started = time.perf_counter()
            cuped_sums_from_events(store, experiment, "s1", ["accepted"], LOOKBACK_DAYS)
            events = time.perf_counter() - started
        out[n] = (plain, units, cuped, events)
        print(f"report over {n} exposures: {plain:.2f} s ({units} users); CUPED's sums "
              f"{cuped:.2f} s (from the events {events:.2f} s)", flush=True)  # fmt: skip
    return out


def store_section(rate: float, times: dict[int, tuple[float, int, float, float]]) -> str:
    lines = [
        "## Results store: ingest and report time",
        "",
        f"`python -m benchmarks.results --store-only` (also in `make bench`), "
        f"{time.strftime('%Y-%m-%d')}, {machine()}. PostgreSQL (Debian's, on this machine): "
        "one writer's ingest (batches of 1000 exposures, one transaction each, the per-user "
        "rollup and CUPED's covariate bookkeeping in the same transaction); then per size one "
        "phase loaded in bulk (n/20 users, 30 % of requests with an outcome) with n/2 earlier "
        "requests by the same users outside any experiment, its rollup and covariates "
        f"rebuilt (lookback {LOOKBACK_DAYS:g} days): the report's query (one row per user and "
        "metric), CUPED's sums from the covariates the writers keep (what a CUPED report "
        "reads), and the same sums from the events (the reference, and what a phase summed "
        "over another lookback reads). Best of three, except from the events (once).",
        "",
        "| measure | seconds | goal |",
        "| --- | ---: | --- |",
        f"| PostgreSQL ingest, one replica | **{rate:,.0f} events/s** | |",
    ]
    for n, (seconds, units, cuped, events) in times.items():
        goal = "< 2 s" if n == 10**7 else ""
        lines += [
            f"| report query, {n:.0e} exposures ({units:,} users) | **{seconds:.2f} s** | {goal} |",
            f"| CUPED's sums from the rollup, {n:.0e} exposures (+{n // 2:.0e} earlier) | "
            f"**{cuped:.2f} s** | {goal} |",
        ]
        if not math.isnan(events):
            lines.append(f"| CUPED's sums from the events, {n:.0e} exposures | {events:.2f} s | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--seconds", type=float, default=16.0, help="per overhead cell")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument(
        "--store-only", action="store_true", help="the store's ingest and report times alone"
    )
    args = parser.parse_args()
    postgres = Postgres()
    try:
        rounds = {} if args.store_only else overhead(args.models, postgres, args.seconds)
        latency = {key: merge(loads) for key, loads in rounds.items()}
        store = ResultsStore(postgres.url)
        store.create()
        rate = ingest(store, 10.0)
        print(f"PostgreSQL ingest: {rate:.0f} events/s", flush=True)
        times = report_times(store, tuple(args.sizes))
        store.close()
    finally:
        postgres.close()
    write_section(args.out, "results-store", store_section(rate, times))
    if args.store_only:
        print(f"wrote {args.out}", file=sys.stderr)
        return
    lines = [
        "## Results store: cost on the request path",
        "",
        f"`make bench` (`python -m benchmarks.results`), {time.strftime('%Y-%m-%d')}, {machine()}.",
        "A wav2vec2 model server and routers on loopback, one route (`embed`, no",
        "experiment; every routed request is a row when the store is on): without a store,",
        "with SQLite, with PostgreSQL (Debian's, on this machine). The 0.5 s clip closed-loop,",
        f"{args.seconds:g} s per cell in {ROUNDS} interleaved rounds, each router path",
        f"{INSTANCES} processes taken in turn; the identical copy is the noise floor. Ingest",
        "and report times: the next section.",
        "",
        "| path | concurrency | req/s | p50 ms | added p50 ms (vs direct) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        for path in PATHS:
            r = latency[(path, c)]
            added = r.p50_ms - latency[("direct", c)].p50_ms
            lines.append(f"| {path} | {c} | {r.throughput:.1f} | {r.p50_ms:.2f} | {added:+.2f} |")
    lines += [
        "",
        "| measure | value (95% bootstrap interval over the rounds) | goal |",
        "| --- | ---: | --- |",
    ]
    for c in CONCURRENCY:
        for path in PATHS[2:]:
            goal = "(noise floor)" if path.startswith("store off") else "<= 1.05"
            cell = ratio_cell(rounds, c, (path,), ("store off",))
            lines.append(f"| added p50, {path} / store off, c={c} | {cell} | {goal} |")
    write_section(args.out, "results", "\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
