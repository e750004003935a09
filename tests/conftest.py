"""Suite-wide fixtures: the tiny reference models, built once per run from fixed seeds."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import Postgres
from tests.support.processes import ServerProcess, modelserver

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_SERVERS = all(
    importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "soxr")
)
"""Whether the modelserver extra is installed: on Python 3.11 `make install` installs it; on
3.12 and 3.13 it installs the router's side only (README, "Supported platforms")."""
NEEDS_MODEL_SERVERS = "needs the modelserver extra (torch, transformers): Python 3.11's install"

# Modules that start model servers in this process: not collected without the extra. Tests
# elsewhere that need model-server processes skip through the fixtures below, naming why.
collect_ignore_glob = [] if MODEL_SERVERS else [
    "modelserver", "router/test_process_stream.py", "telemetry/test_metrics_live.py",
    "telemetry/test_prometheus.py", "telemetry/test_rules_to_code.py", "test_failed_start.py",
]  # fmt: skip


def pytest_report_header() -> str | None:
    if MODEL_SERVERS:
        return None
    return (
        f"{NEEDS_MODEL_SERVERS}: not collected: {', '.join(collect_ignore_glob)}; tests that "
        "start model-server processes skip"
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the suite (each test writes its own phases or its own database)."""
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/wav2vec2 (ONNX), models/wav2vec2-torch (same weights, torch runtime), models/gama
    (converted from the tiny release in models/gama-release)."""
    if not MODEL_SERVERS:
        pytest.skip(NEEDS_MODEL_SERVERS)
    from transformers.utils import logging as hf_logging

    from modelserver.config import write_model_config
    from modelserver.tiny.gama import make_tiny_gama_served
    from modelserver.tiny.wav2vec2 import make_tiny_wav2vec2

    hf_logging.disable_progress_bar()

    root = tmp_path_factory.mktemp("models")
    make_tiny_wav2vec2(root / "wav2vec2")
    make_tiny_wav2vec2(root / "wav2vec2-torch", runtime="torch")
    gama = make_tiny_gama_served(root / "gama-release", root / "gama")
    # A piece per decode step, so the tests that count streamed pieces do not depend on how
    # many steps fit in `max_call_ms` (tests/modelserver/generation covers that path).
    stepwise = gama.continuous_batching.model_copy(update={"max_call_ms": 0})
    write_model_config(root / "gama", gama.model_copy(update={"continuous_batching": stepwise}))
    return root


@pytest.fixture(scope="session")
def model_servers(
    tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """`modelserver serve` processes for wav2vec2 and gama, shared by the router and evaluation
    tests."""
    logs = tmp_path_factory.mktemp("model-logs")
    with (
        modelserver(tiny_models / "wav2vec2", logs) as w2v,
        modelserver(tiny_models / "gama", logs) as gama,
    ):
        yield {"wav2vec2": w2v, "gama": gama}
