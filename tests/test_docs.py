"""Docs stay true: the README's configuration reference names every model.yaml field."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from modelserver.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        nested = [
            a
            for a in getattr(info.annotation, "__args__", (info.annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        names += _fields(nested[0], f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return names


def test_readme_documents_every_model_yaml_field() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("### Configuration reference") :]
    missing = [f for f in _fields(ModelConfig) if f"`{f}`" not in reference]
    assert not missing, f"README configuration reference lacks {missing}"
