"""`modelserver export --family gama` on checkpoints in the released layout: what it writes,
and how it refuses a damaged or foreign checkpoint (exit 4, naming the key)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelserver.cli import main
from modelserver.config import load_model_config
from modelserver.families import load_family
from modelserver.families.gama.family import GamaFamily
from modelserver.tiny.gama_release import BASE_DIR, STAGE_DIR, make_tiny_release
from modelserver.tiny.wav2vec2 import build_ctc_checkpoint
from tests.modelserver.gama.reference import Reference, load_audio
from tests.support.audio import tone

PEFT = "base_model.model."


def _export(release: Path, out: Path, *extra: str) -> list[str]:
    return [
        "export",
        "--family",
        "gama",
        "--checkpoint",
        str(release / STAGE_DIR),
        "--base-model",
        str(release / BASE_DIR),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release")
    make_tiny_release(out, seed=11)
    return out


@pytest.fixture
def copy(release: Path, tmp_path: Path) -> Path:
    shutil.copytree(release, tmp_path / "release")
    return tmp_path / "release"


def _drop_stage_key(release: Path, key: str) -> None:
    path = release / STAGE_DIR / "pytorch_model.bin"
    stage = torch.load(path, weights_only=True)
    del stage[key]
    torch.save(stage, path)


def _drop_base_key(release: Path, key: str) -> None:
    for shard in sorted((release / BASE_DIR).glob("*.safetensors")):
        tensors = load_file(str(shard))
        if key in tensors:
            del tensors[key]
            save_file(tensors, str(shard))
            return
    raise AssertionError(f"{key} is in no base shard")


@pytest.mark.parametrize(
    "key",
    [
        PEFT + "model.audio_encoder.patch_embed_a.proj.weight",
        PEFT + "model.audio_encoder.blocks_a.7.attn.qkv.bias",
        PEFT + "model.audio_encoder.blocks_u.0.norm2_a.weight",
        PEFT + "model.audio_aggregator_layer_2.output.LayerNorm.bias",
        PEFT + "model.Qformer.bert.encoder.layer.2.crossattention.self.key.weight",
        PEFT + "model.query_tokens",
        PEFT + "model.qformer_proj_norm.weight",
        PEFT + "model.audio_proj_audioenc.2.weight",
        PEFT + "model.layers.1.self_attn.v_proj.lora_B.default.weight",
    ],
)
def test_a_missing_stage_key_stops_the_export(
    copy: Path, tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _drop_stage_key(copy, key)
    assert main(_export(copy, tmp_path / "out")) == 4
    assert key.removeprefix(PEFT) in capsys.readouterr().err


@pytest.mark.parametrize(
    "key", ["model.layers.0.mlp.down_proj.weight", "lm_head.weight", "model.norm.weight"]
)
def test_a_missing_base_key_stops_the_export(
    copy: Path, tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _drop_base_key(copy, key)
    assert main(_export(copy, tmp_path / "out")) == 4
    assert key in capsys.readouterr().err


def test_a_wrong_shape_names_the_key(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy / STAGE_DIR / "pytorch_model.bin"
    stage = torch.load(path, weights_only=True)
    key = PEFT + "model.audio_aggregator_layer_1.intermediate.dense.bias"
    stage[key] = torch.zeros(7)
    torch.save(stage, path)
    assert main(_export(copy, tmp_path / "out")) == 4
    assert "audio_aggregator_layer_1.intermediate.dense.bias" in capsys.readouterr().err


def test_an_unknown_key_is_refused(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy / STAGE_DIR / "pytorch_model.bin"
    stage = torch.load(path, weights_only=True)
    stage[PEFT + "model.vision_encoder.weight"] = torch.zeros(3)
    torch.save(stage, path)
    assert main(_export(copy, tmp_path / "out")) == 4
    assert "unexpected key" in capsys.readouterr().err


def test_another_family_is_refused(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav2vec2 = build_ctc_checkpoint(tmp_path / "w2v")
    args = _export(release, tmp_path / "out")
    args[args.index("--checkpoint") + 1] = str(wav2vec2)
    assert main(args) == 4
    assert "not a GAMA stage checkpoint" in capsys.readouterr().err
    args = _export(release, tmp_path / "out")
    args[args.index("--base-model") + 1] = str(wav2vec2)
    assert main(args) == 4
    assert "GAMA's base is LLaMA" in capsys.readouterr().err


def test_written_weights_are_the_stages_with_lora_merged(release: Path, tmp_path: Path) -> None:
    assert main(_export(release, tmp_path / "out")) == 0
    stage = torch.load(release / STAGE_DIR / "pytorch_model.bin", weights_only=True)
    audio = load_file(str(tmp_path / "out" / "audio.safetensors"))
    name = "qformer.encoder.layer.0.attention.attention.query.weight"
    staged = stage[PEFT + "model.Qformer.bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(audio[name], staged)  # the stage's Q-Former, not the base's
    base = {}
    for shard in (release / BASE_DIR).glob("*.safetensors"):
        base.update(load_file(str(shard)))
    lm = {}
    for shard in (tmp_path / "out" / "lm").glob("*.safetensors"):
        lm.update(load_file(str(shard)))
    target = "model.layers.1.self_attn.q_proj"
    a = stage[f"{PEFT}{target}.lora_A.default.weight"]
    b = stage[f"{PEFT}{target}.lora_B.default.weight"]
    torch.testing.assert_close(lm[f"{target}.weight"], base[f"{target}.weight"] + 2.0 * b @ a)
    assert not torch.equal(lm[f"{target}.weight"], base[f"{target}.weight"])
    assert torch.equal(
        lm["model.layers.1.self_attn.k_proj.weight"], base["model.layers.1.self_attn.k_proj.weight"]
    )
    config = load_model_config(tmp_path / "out")
    assert config.gama is not None and config.gama.generation.max_new_tokens == 400
    assert (config.gama.generation.temperature, config.gama.generation.top_k) == (0.1, 500)
    assert config.labels == [] and "tag" not in config.tasks


def test_other_widths_convert_and_agree_with_the_release(tmp_path: Path) -> None:
    """Dimensions come from the weights: 192-wide audio path (3 heads), 6 Q-Former layers,
    a 96-wide LLM with 3 heads."""
    release = tmp_path / "release"
    made = make_tiny_release(release, seed=5, width=192, lm_width=96, lm_heads=3, qformer_layers=6)
    assert main(_export(release, tmp_path / "out")) == 0
    config = load_model_config(tmp_path / "out")
    family = load_family(tmp_path / "out", config, "cpu")
    assert isinstance(family, GamaFamily)
    assert family.embedding_size == 192
    reference = Reference(made.base, made.stage / "pytorch_model.bin")
    fbank = load_audio(tone(1.0))
    want = reference.first_logits(fbank, "What is this?")
    with torch.inference_mode():
        prefix = family.model.encode(fbank.unsqueeze(0)).prefix[0]
        ids = torch.tensor(family.prompt_ids("What is this?"))
        lm = family.model.lm
        embeds = torch.cat([prefix, lm.get_input_embeddings()(ids)]).unsqueeze(0)
        got = lm(inputs_embeds=embeds).logits[0, -1].float()
    # Within 1e-4 of the logits' range: float32 summation order (which varies with CPU
    # threading and load) moved them by up to 1.6e-5 of it in fresh-clone CI runs, where a
    # wrong conversion (a transposed, missing or misplaced tensor) moves them by the range.
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_the_export_says_how_long_and_plans_its_kv_budget(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_export(release, tmp_path / "out", "--no-progress")) == 0
    said = capsys.readouterr()
    assert re.search(r"^exported .* in \d+\.\d s$", said.out, re.M), said.out
    assert "export lm" not in said.err  # no bar with --no-progress
    config = load_model_config(tmp_path / "out")
    assert config.continuous_batching.kv_budget_tokens == "auto"
