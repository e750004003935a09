"""The dataset manifest: JSONL, one clip per line (docs/datasets.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, ValidationError

from gamaserving.settings import StrictSettings


class Clip(StrictSettings):
    id: str = ""
    """Unique within the manifest; the audio path when unset."""
    audio: str = Field(min_length=1)
    """Path of the audio file, relative to the manifest."""
    transcript: str | None = None
    labels: tuple[str, ...] = ()
    reference: str | None = None
    """Reference answer for `describe`."""
    prompt: str | None = None


class ManifestError(Exception):
    pass


class Manifest:
    def __init__(self, path: Path, clips: list[Clip]) -> None:
        self.path = path
        self.clips = clips
        self.root = path.parent

    def audio_path(self, clip: Clip) -> Path:
        return self.root / clip.audio

    def fingerprint(self) -> str:
        """Changes when any clip's fields change (not the audio bytes: hashing every file of a
        large dataset on each resume would cost more than it protects)."""
        digest = hashlib.sha256()
        for clip in self.clips:
            digest.update(clip.model_dump_json().encode())
        return digest.hexdigest()[:16]


def load_manifest(path: Path) -> Manifest:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
    clips: list[Clip] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            clip = Clip.model_validate(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "line"
            raise ManifestError(f"{path}:{number}: {field}: {err['msg']}") from exc
        if not clip.id:
            clip = clip.model_copy(update={"id": clip.audio})
        if clip.id in seen:
            raise ManifestError(f"{path}:{number}: id: duplicate id {clip.id!r}")
        if not (path.parent / clip.audio).is_file():
            raise ManifestError(f"{path}:{number}: audio: no file {path.parent / clip.audio}")
        seen.add(clip.id)
        clips.append(clip)
    if not clips:
        raise ManifestError(f"{path}: no clips")
    return Manifest(path, clips)
