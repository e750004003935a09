"""Simulated users calling the router: a closed loop of workers, each request from a user drawn
out of a fixed population (so assignment is sticky), counted by outcome and arm. Each user
reports whether the answer was good (RecordOutcome `accepted`), judged from the answer and
the clip's true label: the nearest earlier answer of the same model on another clip has the
same label. Nothing is drawn per arm: a model with worse embeddings gets fewer acceptances."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    arms: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    shadowed: int = 0
    in_experiment: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    """arm -> answers the user accepted."""
    reported: Counter[str] = field(default_factory=Counter)
    """arm -> answers the user reported on."""

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


class Judge:
    """Whether an embedding answer was useful: its nearest neighbour among the same model's
    earlier answers on other clips carries the clip's label (online leave-one-out kNN)."""

    def __init__(self, keep: int = 400) -> None:
        self.keep = keep
        self.seen: dict[str, list[tuple[np.ndarray, str, int]]] = {}

    def accepted(self, model: str, features: list[float], label: str, clip: int) -> bool | None:
        vector = np.asarray(features, dtype=np.float64)
        norm = float(np.linalg.norm(vector))
        if not norm:
            return False
        vector /= norm
        memory = self.seen.setdefault(model, [])
        others = [(v, lab) for v, lab, c in memory if c != clip]
        verdict = None
        if others:
            nearest = max(others, key=lambda o: float(o[0] @ vector))
            verdict = nearest[1] == label
        memory.append((vector, label, clip))
        del memory[: -self.keep]
        return verdict


async def simulate_users(
    address: str,
    clips: list[tuple[bytes, str]],
    stop: asyncio.Event,
    stats: TrafficStats,
    users: int = 300,
    workers: int = 4,
    seed: int = 0,
) -> None:
    rng = random.Random(seed)
    judge = Judge()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpb_grpc.AudioRouterStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                index = rng.randrange(len(clips))
                audio, label = clips[index]
                user = rng.randrange(users)
                request = rpb.ProcessRequest(
                    audio=audio, task=rpb.TASK_EMBED, user_id=f"user-{user}"
                )
                stats.sent += 1
                # Which app the user calls from: a segment of the results page.
                client = ("web", "ios", "android")[user % 3]
                try:
                    reply = await stub.Process(
                        request, timeout=5.0, metadata=[("x-client", client)]
                    )
                except grpc.aio.AioRpcError as exc:
                    stats.failed[exc.code().name] += 1
                    continue
                stats.ok += 1
                arm = reply.route.arm
                stats.arms[arm or "(not in experiment)"] += 1
                stats.in_experiment += bool(arm)
                stats.models[reply.route.model] += 1
                stats.fallbacks += reply.route.fallback_used
                stats.shadowed += reply.route.shadowed
                good = judge.accepted(reply.route.model, list(reply.features), label, index)
                if good is None:
                    continue
                outcome = rpb.RecordOutcomeRequest(
                    request_id=reply.request_id, metric="accepted", value=float(good)
                )
                try:
                    await stub.RecordOutcome(outcome, timeout=5.0)
                except grpc.aio.AioRpcError as exc:
                    stats.failed[f"RecordOutcome {exc.code().name}"] += 1
                    continue
                if arm:
                    stats.reported[arm] += 1
                    stats.accepted[arm] += good

        await asyncio.gather(*(worker() for _ in range(workers)))
