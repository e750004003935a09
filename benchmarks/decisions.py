"""Decision quality of the verdict rule (router/experiments/simulate.py): error rates and
time to a decision on simulated phases, the always-valid interval against a fixed-horizon one
looked at just as often. No servers; the project's own `report` at every look.

    python -m benchmarks.decisions --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from benchmarks.common import machine, write_section
from router.experiments.simulate import (
    RULES,
    Cadence,
    World,
    binomial_upper,
    settings,
    simulate,
)

GUARDRAIL, SUCCESS = 0.10, 0.02
WORLDS = (
    (World("A/A", 0.0), "ROLL_BACK"),
    (World("at the success margin (+2%)", SUCCESS), "PROMOTE"),
    (World("at the guardrail margin (+10%)", GUARDRAIL), "ROLL_BACK"),
    (World("beyond the guardrail (+15%)", 0.15), None),
    (World("better by 3%", -0.03), None),
)


def _users(median: float) -> str:
    return "-" if math.isnan(median) else f"{median:.0f}"


def run(phases: int, cadence: Cadence) -> list[str]:
    config = settings(GUARDRAIL, SUCCESS)
    rows = []
    for world, wrong in WORLDS:
        for name, rule in RULES.items():
            rates = simulate(config, world, cadence, rule, phases, seed=2026)
            error = f"**{rates.rate(wrong):.3f}**" if wrong else "-"
            rows.append(
                f"| {world.name} | {name} | {rates.rate('ROLL_BACK'):.3f} | "
                f"{rates.rate('PROMOTE'):.3f} | {rates.rate('KEEP_RUNNING'):.3f} | {error} | "
                f"{_users(rates.median_users_to_promote)} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=int, default=2000)
    parser.add_argument("--peek-users", type=int, default=200)
    parser.add_argument("--horizon-users", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="write the table into this benchmarks page")
    args = parser.parse_args()
    cadence = Cadence(args.peek_users, args.horizon_users)
    started = time.monotonic()
    rows = run(args.phases, cadence)
    bound = binomial_upper(0.05, args.phases)
    body = "\n".join([
        "## Decision quality: the verdict rule on simulated phases", "",
        f"`python -m benchmarks.decisions` ({args.phases} phases per row, "
        f"{time.monotonic() - started:.0f} s), {time.strftime('%Y-%m-%d')}, {machine()}.",
        f"A 50/50 latency experiment: ROLL_BACK when the candidate is shown more than "
        f"{GUARDRAIL:.0%} worse, PROMOTE when shown at most {SUCCESS:.0%} worse, alpha 0.05. "
        f"Users make 1 + Poisson(2) requests around their own mean (sd 40 between users, 20 "
        f"within, control 100); 90 % of them made as many before the phase, around a mean "
        f"that correlates with it so that their linearised values before and in the phase "
        f"correlate at rho 0.7 (CUPED can remove rho squared of the variance among them: 44 % "
        f"in all), and 10 % are new. The rule looks every "
        f"{cadence.peek_users} users up to {cadence.horizon_users}; the first ROLL_BACK or "
        f"PROMOTE ends a phase. Wrong: the "
        f"verdict that would be an error in that world, to hold under alpha (a run of "
        f"{args.phases} phases may read up to {bound:.3f} by chance).", "",
        "| world | rule | ROLL_BACK | PROMOTE | KEEP_RUNNING | wrong "
        "| median users to PROMOTE |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows, ""])  # fmt: skip
    if args.out:
        write_section(args.out, "decisions", body)
    print(body)


if __name__ == "__main__":
    main()
