"""Where the rollout controller reads fleet-wide statistics: the results store, which every
replica writes and which outlives them (a restarted or scaled-in replica loses nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from router.config import ExperimentSettings
from router.experiments.results import ArmResults
from router.results.cuped_query import phase_arms
from router.results.store import ResultsStore, StoreError


class SourceError(Exception):
    """The statistics cannot be read now; the round decides nothing for the experiment."""


class StatsSource(Protocol):
    async def arms(
        self, experiment: ExperimentSettings, outcomes: Sequence[str]
    ) -> dict[str, ArmResults]:
        """The current phase's statistics, as the verdict reads them (CUPED included)."""

    def describe(self) -> str: ...


class StoreSource:
    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    def describe(self) -> str:
        return f"the results store {self.store.describe()}"

    async def arms(
        self, experiment: ExperimentSettings, outcomes: Sequence[str]
    ) -> dict[str, ArmResults]:
        try:
            return await asyncio.to_thread(
                phase_arms, self.store, experiment, experiment.seed, outcomes
            )
        except StoreError as exc:
            raise SourceError(str(exc)) from exc
