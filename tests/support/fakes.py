"""The fakes tests share: a clock they move by hand, and an observer of model calls."""

from __future__ import annotations


class Clock:
    """A clock that stands still until a test moves it (`clock.now += 5`)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Calls:
    """A CallObserver (modelserver/worker.py) that remembers how each model call ended."""

    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self.succeeded = 0

    def call_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)

    def call_succeeded(self) -> None:
        self.succeeded += 1


class Observed:
    """What a results writer reported (router/results/writer.py's WriterObserver)."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.set_aside: list[str] = []
        self.reused = 0

    def results_dropped(self, kind: str, n: int) -> None:
        self.dropped += [kind] * n

    def results_set_aside(self, kind: str, n: int) -> None:
        self.set_aside += [kind] * n

    def request_ids_reused(self, n: int) -> None:
        self.reused += n
