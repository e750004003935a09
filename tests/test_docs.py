"""Docs stay true: the README's configuration reference names every model.yaml field."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from modelserver.config import ModelConfig
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[1]


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every setting; a dict of sections shows its key as <key> or <task>."""
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation) or (annotation,)
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if sections and origin is dict:
            key = "<task>" if name == "routes" else "<key>"
            names += _fields(sections[0], f"{prefix}{name}.{key}.")
        elif sections and origin is not list:
            names += _fields(sections[0], f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def test_readme_documents_every_model_yaml_field() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("### Configuration reference") :]
    missing = [f for f in _fields(ModelConfig) if f"`{f}`" not in reference]
    assert not missing, f"README configuration reference lacks {missing}"


def test_readme_documents_every_router_yaml_field() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("### Router configuration reference") :]
    reference = reference[: reference.index("\n## ")]
    missing = []
    for field in _fields(RouterConfig):
        head, _, leaf = field.rpartition(".")
        # Rows may group siblings: `a.b.x` / `.y` documents a.b.y.
        documented = f"`{field}`" in reference or (
            f"`.{leaf}`" in reference and f"`{head}." in reference
        )
        if not documented:
            missing.append(field)
    assert not missing, f"README router reference lacks {missing}"
