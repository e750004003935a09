"""Simulated users calling the router: a closed loop of workers, each request from a user drawn
out of a fixed population (so assignment is sticky), counted by outcome and arm."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import grpc

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

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


async def simulate_users(
    address: str,
    clips: list[bytes],
    stop: asyncio.Event,
    stats: TrafficStats,
    users: int = 300,
    workers: int = 4,
    seed: int = 0,
) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpb_grpc.AudioRouterStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                request = rpb.ProcessRequest(
                    audio=rng.choice(clips),
                    task=rpb.TASK_EMBED,
                    user_id=f"user-{rng.randrange(users)}",
                )
                stats.sent += 1
                try:
                    reply = await stub.Process(request, timeout=5.0)
                except grpc.aio.AioRpcError as exc:
                    stats.failed[exc.code().name] += 1
                    continue
                stats.ok += 1
                stats.arms[reply.route.arm or "(not in experiment)"] += 1
                stats.models[reply.route.model] += 1
                stats.fallbacks += reply.route.fallback_used
                stats.shadowed += reply.route.shadowed

        await asyncio.gather(*(worker() for _ in range(workers)))
