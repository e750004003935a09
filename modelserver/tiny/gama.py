"""A tiny GAMA: a release in the published layout (`gama_release`), converted by our
converter exactly as a real checkpoint is."""

from __future__ import annotations

from pathlib import Path

from modelserver.config import GamaGeneration, ModelConfig
from modelserver.families.gama.convert import export_gama
from modelserver.tiny.gama_release import make_tiny_release
from modelserver.tiny.vocab import SEED

# Tiny answers stay short: the released 400-token bound would make every test call long.
TINY_MAX_NEW_TOKENS = 32


def make_tiny_gama(out: Path, seed: int = SEED) -> Path:
    """GAMA in its released layout (base directory and stage checkpoint), tiny widths."""
    return make_tiny_release(out, seed).stage


def make_tiny_gama_served(release: Path, out: Path, seed: int = SEED) -> ModelConfig:
    """The tiny release, converted as `make models` does (`modelserver export`)."""
    made = make_tiny_release(release, seed)
    return export_gama(
        made.stage,
        made.base,
        out,
        version="tiny-1",
        labels=made.labels.read_text().split(),
        generation=GamaGeneration(max_new_tokens=TINY_MAX_NEW_TOKENS),
    )
