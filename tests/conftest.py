"""Suite-wide fixtures: the tiny reference models, built once per run from fixed seeds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess, modelserver

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/wav2vec2 (ONNX), models/wav2vec2-torch (same weights, torch runtime), models/gama
    (converted from the tiny release in models/gama-release)."""
    from transformers.utils import logging as hf_logging

    from modelserver.tiny.gama import make_tiny_gama_served
    from modelserver.tiny.wav2vec2 import make_tiny_wav2vec2

    hf_logging.disable_progress_bar()

    root = tmp_path_factory.mktemp("models")
    make_tiny_wav2vec2(root / "wav2vec2")
    make_tiny_wav2vec2(root / "wav2vec2-torch", runtime="torch")
    make_tiny_gama_served(root / "gama-release", root / "gama")
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
