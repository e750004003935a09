"""Per-sample results in SQLite, committed as they arrive, so a killed run resumes where it
stopped and its report is computed from the same rows as an uninterrupted run's."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    clip_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    latency_ms REAL NOT NULL,
    queue_ms REAL NOT NULL,
    compute_ms REAL NOT NULL,
    text TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    scores TEXT NOT NULL DEFAULT '[]',
    embedding BLOB,
    PRIMARY KEY (clip_id, model)
);
CREATE TABLE IF NOT EXISTS memory (
    model TEXT PRIMARY KEY,
    rss_bytes INTEGER NOT NULL,
    peak_rss_bytes INTEGER NOT NULL,
    gpu_bytes INTEGER
);
"""


@dataclass(frozen=True)
class SampleResult:
    clip_id: str
    model: str
    status: str
    """"OK", or the gRPC status code name the model server answered with."""
    latency_ms: float
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    text: str | None = None
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    embedding: np.ndarray | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass(frozen=True)
class MemoryUsage:
    rss_bytes: int
    """The highest resident set size sampled during the run."""
    peak_rss_bytes: int
    """The server's own high-water mark since it started (includes loading the model)."""
    gpu_bytes: int | None


class RunMismatchError(Exception):
    pass


class ResultStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        # WAL: readers (a progress check, a second process) never block the writer; FULL: a
        # committed row survives a crash of the machine, not only of the process.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def bind(self, identity: dict[str, str], fresh: bool = False) -> None:
        """Ties the store to one run (dataset, models, task). A different run into the same
        directory would mix results, so it is refused unless `fresh` clears the old one."""
        stored = dict(self._db.execute("SELECT key, value FROM run").fetchall())
        if stored and stored != identity and not fresh:
            changed = sorted(
                k for k in identity.keys() | stored.keys() if identity.get(k) != stored.get(k)
            )
            raise RunMismatchError(
                f"results in this directory belong to another run (differs in: "
                f"{', '.join(changed)}); use another --out or pass --fresh to start over"
            )
        with self._db:
            if fresh or stored != identity:
                self._db.execute("DELETE FROM run")
                self._db.execute("DELETE FROM results")
                self._db.execute("DELETE FROM memory")
            self._db.executemany(
                "INSERT OR REPLACE INTO run (key, value) VALUES (?, ?)", identity.items()
            )

    def identity(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM run").fetchall())

    def done(self) -> set[tuple[str, str]]:
        return {(c, m) for c, m in self._db.execute("SELECT clip_id, model FROM results")}

    def add(self, result: SampleResult) -> None:
        embedding = (
            None
            if result.embedding is None
            else np.asarray(result.embedding, dtype="<f4").tobytes()
        )
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result.clip_id,
                    result.model,
                    result.status,
                    result.error,
                    result.latency_ms,
                    result.queue_ms,
                    result.compute_ms,
                    result.text,
                    json.dumps(list(result.labels)),
                    json.dumps(list(result.scores)),
                    embedding,
                ),
            )

    def results(self) -> list[SampleResult]:
        rows = self._db.execute(
            "SELECT clip_id, model, status, error, latency_ms, queue_ms, compute_ms, text, "
            "labels, scores, embedding FROM results ORDER BY clip_id, model"
        )
        return [
            SampleResult(
                clip_id=r[0],
                model=r[1],
                status=r[2],
                error=r[3],
                latency_ms=r[4],
                queue_ms=r[5],
                compute_ms=r[6],
                text=r[7],
                labels=tuple(json.loads(r[8])),
                scores=tuple(json.loads(r[9])),
                embedding=None if r[10] is None else np.frombuffer(r[10], dtype="<f4"),
            )
            for r in rows
        ]

    def record_memory(self, model: str, usage: MemoryUsage) -> None:
        """Keeps the maximum over this and earlier (interrupted) sessions of the run."""
        with self._db:
            self._db.execute(
                "INSERT INTO memory VALUES (?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                "rss_bytes = max(rss_bytes, excluded.rss_bytes), "
                "peak_rss_bytes = max(peak_rss_bytes, excluded.peak_rss_bytes), "
                "gpu_bytes = max(coalesce(gpu_bytes, 0), coalesce(excluded.gpu_bytes, 0))",
                (model, usage.rss_bytes, usage.peak_rss_bytes, usage.gpu_bytes),
            )

    def memory(self) -> dict[str, MemoryUsage]:
        rows = self._db.execute("SELECT model, rss_bytes, peak_rss_bytes, gpu_bytes FROM memory")
        return {m: MemoryUsage(r, p, g or None) for m, r, p, g in rows}
