"""The alert engine's collaborator in tests: signal values set by hand."""

from __future__ import annotations


class Signals:
    def __init__(self) -> None:
        self.values: dict[str, list[tuple[dict[str, str], float]]] = {}

    def __call__(self, signal: str) -> list[tuple[dict[str, str], float]]:
        return self.values.get(signal, [])
