"""Suite-wide fixtures: the tiny reference models, built once per run from fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/wav2vec2 (ONNX), models/wav2vec2-torch (same weights, torch runtime), models/gama
    (converted from the tiny release in models/gama-release)."""
    from transformers.utils import logging as hf_logging

    from modelserver.tiny import make_tiny_gama_served, make_tiny_wav2vec2

    hf_logging.disable_progress_bar()

    root = tmp_path_factory.mktemp("models")
    make_tiny_wav2vec2(root / "wav2vec2")
    make_tiny_wav2vec2(root / "wav2vec2-torch", runtime="torch")
    make_tiny_gama_served(root / "gama-release", root / "gama")
    return root
