"""Prometheus names back to the OpenTelemetry names documented in docs/observability.md."""

from __future__ import annotations

import re
from pathlib import Path

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
