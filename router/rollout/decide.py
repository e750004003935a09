"""The rollout rule, a pure function of one phase's state and its fleet-wide report: roll back
on a failing guardrail (when `auto_rollback`), else take the next `ramp` step on a healthy
verdict with `min_samples` fresh requests per arm since the last change."""

from __future__ import annotations

from router.config import ExperimentSettings
from router.experiments.results import SRM_ALPHA, Report, per_arm
from router.rollout.state import Decision, PhaseState, Status


def governed(e: ExperimentSettings) -> bool:
    """Whether the controller decides this experiment's coverage."""
    return bool(e.ramp) or e.auto_rollback


def _status(e: ExperimentSettings, coverage: float) -> Status:
    return "ramping" if any(step > coverage for step in e.ramp) else "steady"


def start(e: ExperimentSettings, now: float) -> tuple[PhaseState, Decision]:
    """A phase the controller has not seen: it starts at the configured coverage."""
    phase = PhaseState(
        experiment=e.name,
        seed=e.seed,
        coverage=e.coverage,
        status=_status(e, e.coverage),
        updated_at=now,
    )
    decision = Decision(
        at=now,
        experiment=e.name,
        seed=e.seed,
        action="start",
        from_coverage=e.coverage,
        to_coverage=e.coverage,
        reasons=["a new phase starts at the configured coverage"],
    )
    return phase, decision


def decide(
    e: ExperimentSettings, phase: PhaseState, result: Report, now: float
) -> tuple[PhaseState, Decision | None]:
    """The phase after this evaluation, and the decision taken (None: nothing changes)."""
    after, decision, _ = judge(e, phase, result, now)
    return after, decision


def judge(
    e: ExperimentSettings, phase: PhaseState, result: Report, now: float
) -> tuple[PhaseState, Decision | None, str]:
    """`decide`, with why nothing changes when no decision is taken (empty otherwise)."""

    def decision(action: str, to: float, reasons: list[str]) -> Decision:
        return Decision.model_validate(
            {
                "at": now,
                "experiment": e.name,
                "seed": e.seed,
                "action": action,
                "from_coverage": phase.coverage,
                "to_coverage": to,
                "verdict": result.verdict,
                "counts": result.counts,
                "srm_p_value": result.srm_p_value,
                "reasons": reasons,
            }
        )

    decided = not phase.paused and phase.status != "rolled_back"
    if decided and e.auto_rollback and result.verdict == "ROLL_BACK":
        rolled = phase.model_copy(
            update={
                "coverage": 0.0,
                "status": "rolled_back",
                "marks": dict(result.counts),
                "updated_at": now,
            }
        )
        return rolled, decision("rollback", 0.0, list(result.reasons)), ""
    nxt = next((step for step in e.ramp if step > phase.coverage), None)
    fresh = {a: n - phase.marks.get(a, 0) for a, n in result.counts.items()}
    why = _held(e, phase, result, nxt, fresh)
    if why or nxt is None:
        return phase, None, why
    ramped = phase.model_copy(
        update={
            "coverage": nxt,
            "status": _status(e, nxt),
            "marks": dict(result.counts),
            "updated_at": now,
        }
    )
    reasons = [
        f"healthy: verdict {result.verdict}, sample-ratio p = {result.srm_p_value:.3g}, "
        f"fresh requests per arm ({per_arm(fresh)}) >= {e.min_samples}"
    ]
    return ramped, decision("ramp", nxt, reasons), ""


def _held(
    e: ExperimentSettings,
    phase: PhaseState,
    result: Report,
    nxt: float | None,
    fresh: dict[str, int],
) -> str:
    """Why the phase does not ramp now, in the order the rule asks; empty when it may."""
    rules = [
        (phase.paused, "paused by hand (`router rollout --resume` lets the controller decide)"),
        (phase.status == "rolled_back", "rolled back; a new seed starts a new phase"),
        (nxt is None, f"no ramp step above coverage {phase.coverage:g}"),
        (
            result.verdict == "ROLL_BACK",
            "verdict ROLL_BACK without auto_rollback, holding: " + "; ".join(result.reasons),
        ),
        (
            result.srm_p_value < SRM_ALPHA,
            f"sample-ratio mismatch (p = {result.srm_p_value:.3g} < {SRM_ALPHA:g}): the split is "
            "broken, holding until it is explained",
        ),
        (
            any(n < e.min_samples for n in fresh.values()),
            f"waiting for {e.min_samples} fresh requests per arm since the last step "
            f"(have {per_arm(fresh)})",
        ),
    ]
    return next((why for held, why in rules if held), "")
