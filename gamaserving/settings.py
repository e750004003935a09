"""Settings files, one way for every process: strict pydantic models, YAML read into them, every
problem reported at once with its field's dotted path, and relative paths resolved against the
file that names them (so a configuration means the same whatever directory it is run from)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

BASE_DIR = "base_dir"
"""Validation context key: the directory relative `ConfigPath`s are resolved against."""


class StrictSettings(BaseModel):
    """Unknown keys are errors (a typo must not silently keep a default); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get(BASE_DIR)
    if base is None or value.is_absolute():
        return value
    return Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
"""A file named in a settings file: relative to that file's directory when read with
`load_settings`, as given otherwise (command-line flags, code)."""


class SettingsError(Exception):
    """A settings file cannot be used; the message names the file and each problem's field."""


def field_errors(err: ValidationError) -> list[str]:
    """One `field.path: message` per problem."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{loc + ': ' if loc else ''}{msg}")
    return out


def format_errors(source: Path, what: str, errors: list[str]) -> str:
    return "\n".join([f"{source}: invalid {what}", *(f"  {x}" for x in errors)])


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping at `path`, or SettingsError saying why not."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    return raw


S = TypeVar("S", bound=BaseModel)


def validate_mapping(cls: type[S], raw: dict[str, Any], path: Path) -> S:
    """`raw` (read from `path`) as `cls`, relative paths resolved against `path`'s directory.
    Raises ValidationError: callers that add checks of their own report them together."""
    return cls.model_validate(raw, context={BASE_DIR: path.parent.resolve()})
