"""model.yaml validation: every error names its field."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelserver.config import ModelDirError, load_model_config


def _write(
    tmp_path: Path, source: Path, edit: dict[str, Any] | None = None, drop: str | None = None
) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    config = yaml.safe_load((target / "model.yaml").read_text())
    config.update(edit or {})
    if drop:
        config.pop(drop)
    (target / "model.yaml").write_text(yaml.safe_dump(config))
    return target


def test_tiny_models_are_valid(tiny_models: Path) -> None:
    w2v = load_model_config(tiny_models / "wav2vec2")
    assert (w2v.family, w2v.runtime, w2v.artifact) == ("wav2vec2", "onnx", "model.onnx")
    assert w2v.wav2vec2 is not None and w2v.wav2vec2.vocab[w2v.wav2vec2.blank_id] == "<pad>"
    gama = load_model_config(tiny_models / "gama")
    assert gama.gama is not None and gama.labels[0] == "speech"
    assert [t.value for t in gama.tasks] == ["tag", "embed", "describe"]


@pytest.mark.parametrize(
    ("edit", "drop", "needle"),
    [
        ({"family": "whisper"}, None, "family"),
        ({"runtime": "tensorrt"}, None, "runtime"),
        ({"batching": {"max_batch_size": 0}}, None, "batching.max_batch_size"),
        ({"batching": {"max_queue_delay_ms": -1}}, None, "batching.max_queue_delay_ms"),
        ({"limits": {"max_audio_seconds": 0}}, None, "limits.max_audio_seconds"),
        ({"sample_rate": 100}, None, "sample_rate"),
        ({"name": "bad name!"}, None, "name"),
        ({"artifact": "missing.onnx"}, None, "artifact"),
        ({"wav2vec2": {"head": "ctc", "vocab": []}}, None, "wav2vec2.vocab"),
        ({"wav2vec2": {"head": "classification"}, "labels": []}, None, "labels"),
        ({"batching": {"max_batch": 4}}, None, "batching.max_batch"),
        ({}, "family", "family"),
    ],
)
def test_invalid_wav2vec2_config_names_the_field(
    tiny_models: Path, tmp_path: Path, edit: dict[str, Any], drop: str | None, needle: str
) -> None:
    model_dir = _write(tmp_path, tiny_models / "wav2vec2", edit, drop)
    with pytest.raises(ModelDirError) as info:
        load_model_config(model_dir)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"runtime": "onnx"}, "runtime"),
        ({"gama": {"lm": "nowhere"}}, "gama.lm"),
        ({"gama": {"prompt_template": "no slot"}}, "prompt_template"),
        ({"downmix": "left"}, "downmix"),
        ({"gama": {"generation": {"temperature": 5}}}, "gama.generation.temperature"),
    ],
)
def test_invalid_gama_config_names_the_field(
    tiny_models: Path, tmp_path: Path, edit: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ModelDirError) as info:
        load_model_config(_write(tmp_path, tiny_models / "gama", edit))
    assert needle in str(info.value)


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not a directory"):
        load_model_config(tmp_path / "nope")
    with pytest.raises(ModelDirError, match=r"model\.yaml: missing"):
        load_model_config(tmp_path)
    (tmp_path / "model.yaml").write_text("name: [unclosed")
    with pytest.raises(ModelDirError, match="not valid YAML"):
        load_model_config(tmp_path)
    (tmp_path / "model.yaml").write_text("- a list")
    with pytest.raises(ModelDirError, match="mapping"):
        load_model_config(tmp_path)


def test_vocabulary_size_must_match_the_model(tiny_models: Path, tmp_path: Path) -> None:
    from modelserver.families import load_family

    model_dir = _write(tmp_path, tiny_models / "wav2vec2")
    config = load_model_config(model_dir)
    assert config.wav2vec2 is not None
    short = config.model_copy(
        update={
            "wav2vec2": config.wav2vec2.model_copy(update={"vocab": config.wav2vec2.vocab[:-3]})
        }
    )
    with pytest.raises(ValueError, match="vocab has 29 entries but the model outputs 32"):
        load_family(model_dir, short, "cpu")
