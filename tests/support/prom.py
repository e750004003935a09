"""Prometheus names back to the OpenTelemetry names documented in docs/observability.md."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import yaml

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def family(sample: str) -> str:
    """`rpc_server_call_duration_seconds_bucket` -> `rpc_server_call_duration`."""
    for suffix in ("_bucket", "_count", "_sum", "_created", "_total"):
        sample = sample.removesuffix(suffix)
    for unit in ("_seconds", "_bytes", "_ratio"):
        sample = sample.removesuffix(unit)
    return sample


def documented() -> set[str]:
    """Documented metric names with dots as underscores."""
    doc = (ROOT / "docs" / "observability.md").read_text()
    return {
        name.replace(".", "_") for name in re.findall(r"^\| `([a-z][a-z0-9_.]+)` \|", doc, re.M)
    }


@contextlib.asynccontextmanager
async def prometheus(directory: Path, jobs: dict[str, list[str]]) -> AsyncIterator[int]:
    """A real Prometheus scraping `jobs` (name -> targets) every second; yields its port."""
    binary = shutil.which("prometheus")
    assert binary is not None, "callers skip when prometheus is missing"
    scrape = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    port = free_port()
    with (directory / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield port
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
