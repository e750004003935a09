"""`router report` and `router results prune`: the results store from the command line."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from gamaserving.jsonout import dumps, none_to_nan
from gamaserving.terminal import print_out
from router.admin.render import interval, num, pct, segments_text, table
from router.config import ConfigError, RouterConfig, load_config
from router.results.document import phase_page, phase_report
from router.results.query import outcome_metrics, phase_statistics, phases
from router.results.store import Exposure, ResultsStore, RowsRejected, StoreError, event_kind


def _fail(message: str, code: int = 2) -> int:
    print(f"router: {message}", file=sys.stderr)
    return code


def store_url(given: str | None, config: RouterConfig) -> str:
    """--results, else the configuration's results store."""
    if given:
        return given
    if config.results is None:
        raise ConfigError("no results store: pass --results URL or set results.url")
    return config.results.resolved_url()


def phase_counts(store: ResultsStore, name: str, seed: str | None) -> dict[str, Any]:
    """Without the configuration (no arms' weights, no criteria): what the store holds for the
    phase (the latest one when no seed is given): requests, users and means per arm."""
    stored = phases(store, name)
    phase = seed or next(iter(stored), None)
    if phase is None:
        raise ConfigError(f"no exposures of experiment {name!r} in {store.describe()}")
    if phase not in stored:
        raise ConfigError(
            f"experiment {name!r} has no phase with seed {phase!r} in {store.describe()}; its "
            f"phases: {', '.join(stored)}"
        )
    arms = phase_statistics(store, name, phase, outcome_metrics(store, name, phase))
    return {
        "experiment": name,
        "seed": phase,
        "counts": {arm: a.requests for arm, a in arms.items()},
        "units": {arm: a.units for arm, a in arms.items()},
        "means": {arm: {m: s.mean for m, s in a.metrics.items()} for arm, a in arms.items()},
        "note": "no --config: counts and means only (the verdict needs the arms' weights "
        "and criteria)",
    }


def as_text(report: dict[str, Any]) -> str:
    """The report for a person: the verdict and its reasons, each arm's users, requests and
    means, and each comparison with its intervals (relative effects in percent)."""
    verdict = report.get("verdict", "counts and means only (no --config)")
    out = [f"experiment {report['experiment']}, seed {report['seed']}: {verdict}"]
    out += [f"  - {reason}" for reason in report.get("reasons", [])]
    metrics = sorted({m for means in report["means"].values() for m in means})
    rows = [
        [
            arm,
            report["units"].get(arm, 0),  # an arm no user reached yet has no row
            n,
            *(num(report["means"].get(arm, {}).get(m, math.nan)) for m in metrics),
        ]
        for arm, n in report["counts"].items()
    ]
    out += ["", table(["ARM", "USERS", "REQUESTS", *(m.upper() for m in metrics)], rows)]
    if "comparisons" in report:
        rows = [
            [c["arm"], c["metric"], num(c["control_mean"]), num(c["arm_mean"]),
             f"{num(c['difference'])} {interval(*map(none_to_nan, c['ci']))}",
             pct(none_to_nan(c["relative"])), interval(*map(none_to_nan, c["confidence_sequence"]))]
            for c in report["comparisons"]
        ]  # fmt: skip
        headers = ["ARM", "METRIC", "CONTROL", "ARM MEAN", "DIFFERENCE [95%]", "RELATIVE",
                   "ALWAYS-VALID"]  # fmt: skip
        if any("cuped" in c for c in report["comparisons"]):
            # Under CUPED the means and intervals above are the adjusted ones.
            headers.append("CUPED VARIANCE")
            for row, c in zip(rows, report["comparisons"], strict=True):
                cut = c.get("cuped", {}).get("variance_reduction")
                row.append("-" if cut is None else f"-{cut:.0%}")
        out += ["", table(headers, rows)]
    if "note" in report:
        out += ["", report["note"]]
    return "\n".join(out)


def _report_output(args: argparse.Namespace, config: RouterConfig | None,
                   store: ResultsStore) -> str:  # fmt: skip
    """What `router report` prints: the tables, strict JSON, or where it wrote the page."""
    if args.html is not None:
        if config is None:
            raise ConfigError("--html needs --config (the verdict needs the arms and criteria)")
        page = phase_page(config, store, args.experiment, args.seed, args.correction)
        args.html.write_text(page)
        return f"wrote {args.html}"
    if config is None:
        if args.segment:
            raise ConfigError("--segment needs --config (the experiment's dimensions)")
        report = phase_counts(store, args.experiment, args.seed)
    else:
        report = phase_report(
            config, store, args.experiment, args.seed, args.segment, args.correction
        )
    # Strict JSON: an undefined number (a relative change from a zero control mean) is null.
    if args.json:
        return dumps(report)
    text = as_text(report)
    return text + "\n\n" + segments_text(report["segments"]) if args.segment else text


def report_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else None
        if config is None and not args.results:
            raise ConfigError("pass --results URL, --config FILE, or both")
        url = args.results if config is None else store_url(args.results, config)
        base = args.config.parent.resolve() if args.config else None
        store = ResultsStore.existing(url, base)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    except StoreError as exc:
        return _fail(str(exc), 3)
    try:
        print_out(_report_output(args, config, store))
    except (ConfigError, OSError) as exc:  # OSError: --html to a path it cannot write
        return _fail(str(exc))
    except StoreError as exc:
        return _fail(str(exc), 3)
    finally:
        store.close()
    return 0


def prune_command(args: argparse.Namespace) -> int:
    try:
        store = ResultsStore.existing(args.results)
        deleted = store.prune(args.experiment, args.seed)
    except StoreError as exc:
        return _fail(str(exc), 3)
    phase = f"seed {args.seed}" if args.seed else "every phase"
    print(f"deleted {deleted} exposures of {args.experiment} ({phase}) and their outcomes")
    store.close()
    return 0


def migrate_command(args: argparse.Namespace) -> int:
    try:
        store = ResultsStore(args.results)
        before, after = store.migrate()
    except StoreError as exc:
        return _fail(str(exc), 3)
    store.close()
    if before is None:
        print(f"created {store.describe()} at results schema {after}")
    elif before == after:
        print(f"{store.describe()} is at results schema {after} already")
    else:
        print(f"migrated {store.describe()} from results schema {before} to {after}")
    return 0


def dead_letters_command(args: argparse.Namespace) -> int:
    """List the events the store refused on their own; with --replay, write them again (after
    the cause is fixed) and forget those the store now takes."""
    try:
        store = ResultsStore.existing(args.results)
        letters = store.dead_letters()
        if args.replay:
            written = []
            for letter in letters:
                event = letter.event
                try:
                    if isinstance(event, Exposure):
                        store.write([event], [])
                    else:
                        store.write([], [event])
                except RowsRejected:
                    continue
                written.append(letter.id)
            store.forget_dead_letters(written)
            print(f"replayed {len(written)} of {len(letters)} dead letters; "
                  f"{len(letters) - len(written)} are still refused")  # fmt: skip
            return 0 if len(written) == len(letters) else 1
    except StoreError as exc:
        return _fail(str(exc), 3)
    if args.json:
        print(dumps([{"id": d.id, "at": d.at, "reason": d.reason, "kind": event_kind(d.event),
                      "event": vars(d.event)} for d in letters]))  # fmt: skip
    else:
        for d in letters:
            print(f"{d.id}  {event_kind(d.event)}  request {d.event.request_id[:64]!r}: {d.reason}")
        print(f"{len(letters)} dead letters")
    store.close()
    return 0
