"""Model families: all model-specific pre- and post-processing lives here."""

from __future__ import annotations

from pathlib import Path

from modelserver.config import ModelConfig
from modelserver.families.base import Family


def load_family(model_dir: Path, config: ModelConfig, device: str) -> Family:
    """Load the model's artifacts onto the device; imports the heavy family lazily."""
    from transformers.utils import logging as hf_logging

    # A server logs its own lines; transformers' progress bars would only garble them.
    hf_logging.disable_progress_bar()
    if config.family == "wav2vec2":
        from modelserver.families.wav2vec2.family import Wav2Vec2Family

        return Wav2Vec2Family.load(model_dir, config, device)
    from modelserver.families.gama.family import GamaFamily

    return GamaFamily.load(model_dir, config, device)
