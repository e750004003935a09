"""The full-size release's key list, written here from the release's code, against the
converter's checks and the served model built on the meta device at full size (LLaMA-2-7B,
CAV-MAE 768, bert-base Q-Former): every key placed, every shape as the served model needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modelserver.config import GamaSettings
from modelserver.families.gama import convert

D, MLP, LLM, VOCAB, LAYERS = 768, 3072, 4096, 32000, 32


def _linear(name: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def _norm(name: str, width: int = D) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def _bert_attention(name: str, kv_width: int = D) -> dict[str, tuple[int, ...]]:
    # Qformer.py BertAttention: self.{query,key,value}, output.{dense,LayerNorm}
    keys = _linear(f"{name}.self.query", D, D)
    keys |= _linear(f"{name}.self.key", D, kv_width) | _linear(f"{name}.self.value", D, kv_width)
    return keys | _linear(f"{name}.output.dense", D, D) | _norm(f"{name}.output.LayerNorm")


def _ffn(name: str, kind: str) -> dict[str, tuple[int, ...]]:
    return (
        _linear(f"{name}.intermediate{kind}.dense", MLP, D)
        | _linear(f"{name}.output{kind}.dense", D, MLP)
        | _norm(f"{name}.output{kind}.LayerNorm")
    )


def stage_keys() -> dict[str, tuple[int, ...]]:
    """`Trainer._save`'s selection of the PEFT-wrapped LlamaForCausalLM (modeling_llama.py
    LlamaModel.__init__, cavmae.py CAVMAEFTAudio, Qformer.py with intermediate/output, word and
    position embeddings set to None by init_Qformer)."""
    m = "base_model.model.model."
    keys: dict[str, tuple[int, ...]] = {
        f"{m}audio_encoder.patch_embed_a.proj.weight": (D, 1, 16, 16),
        f"{m}audio_encoder.patch_embed_a.proj.bias": (D,),
        f"{m}audio_encoder.modality_a": (1, 1, D),
        f"{m}audio_encoder.pos_embed_a": (1, 512, D),
    }
    blocks = [f"blocks_a.{i}" for i in range(11)] + ["blocks_u.0"]
    for block in blocks:
        b = f"{m}audio_encoder.{block}"
        for norm in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v"):
            keys |= _norm(f"{b}.{norm}")
        keys |= _linear(f"{b}.attn.qkv", 3 * D, D) | _linear(f"{b}.attn.proj", D, D)
        keys |= _linear(f"{b}.mlp.fc1", MLP, D) | _linear(f"{b}.mlp.fc2", D, MLP)
    for norm in ("norm_a", "norm_j", "norm_k"):
        keys |= _norm(f"{m}audio_encoder.{norm}")
    keys |= qformer_keys(m)
    for n in (1, 2):
        layer = f"{m}audio_aggregator_layer_{n}"
        keys |= _bert_attention(f"{layer}.attention") | _bert_attention(f"{layer}.crossattention")
        keys |= _ffn(layer, "") | _ffn(layer, "_query")
    for name in ("audio_proj_qformer", "audio_proj_audioenc"):
        keys |= _linear(f"{m}{name}.0", LLM, D) | _linear(f"{m}{name}.2", LLM, LLM)
    for i in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            p = f"{m}layers.{i}.self_attn.{proj}"
            keys[f"{p}.lora_A.default.weight"] = (8, LLM)
            keys[f"{p}.lora_B.default.weight"] = (LLM, 8)
    return keys


def qformer_keys(m: str) -> dict[str, tuple[int, ...]]:
    q = f"{m}Qformer.bert"
    keys = _norm(f"{q}.embeddings.LayerNorm") | {f"{q}.embeddings.position_ids": (1, 512)}
    for i in range(12):
        layer = f"{q}.encoder.layer.{i}"
        keys |= _bert_attention(f"{layer}.attention") | _ffn(layer, "_query")
        if i % 2 == 0:
            keys |= _bert_attention(f"{layer}.crossattention")
    keys[f"{m}query_tokens"] = (1, 32, D)
    return keys | _norm(f"{m}qformer_proj_norm")


def base_keys() -> dict[str, tuple[int, ...]]:
    """Llama-2-7b-chat-hf's tensors plus the release's Q-Former shard."""
    keys: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB, LLM),
        "model.norm.weight": (LLM,),
        "lm_head.weight": (VOCAB, LLM),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            keys[f"{p}.self_attn.{proj}.weight"] = (LLM, LLM)
        keys[f"{p}.self_attn.rotary_emb.inv_freq"] = (64,)
        keys[f"{p}.mlp.gate_proj.weight"] = (11008, LLM)
        keys[f"{p}.mlp.up_proj.weight"] = (11008, LLM)
        keys[f"{p}.mlp.down_proj.weight"] = (LLM, 11008)
        keys[f"{p}.input_layernorm.weight"] = (LLM,)
        keys[f"{p}.post_attention_layernorm.weight"] = (LLM,)
    return keys | qformer_keys("model.")


LLAMA2_7B = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=LLM,
    intermediate_size=11008,
    num_hidden_layers=LAYERS,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


class Shapes:
    """A file that holds only shapes (a collaborator of the converter's check)."""

    def __init__(self, name: str, shapes: dict[str, tuple[int, ...]]) -> None:
        self.path = Path(name)
        self.shapes = shapes
        self.names = list(shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.shapes[key]


def _inventory(
    stage: dict[str, tuple[int, ...]], base: dict[str, tuple[int, ...]]
) -> convert.Inventory:
    inventory = convert.Inventory()
    base_file, stage_file = Shapes("base", base), Shapes("stage", stage)
    for key in base:
        convert._take(inventory, base_file, key, from_stage=False)  # type: ignore[arg-type]
    for key in stage:
        convert._take(inventory, stage_file, key, from_stage=True)  # type: ignore[arg-type]
    return inventory


def test_the_full_size_release_places_every_key_and_shape() -> None:
    inventory = _inventory(stage_keys(), base_keys())
    audio = convert.check(inventory, LLAMA2_7B, GamaSettings())
    dims = audio.dims
    assert (dims.encoder.width, dims.encoder.heads, dims.encoder.grid) == (768, 12, (8, 64))
    assert (dims.encoder.depth_a, dims.encoder.depth_u) == (11, 1)
    assert (dims.qformer.layers, dims.qformer.heads, dims.qformer.cross_every) == (12, 12, 2)
    assert (dims.qformer.queries, dims.prefix_tokens, dims.lm_width) == (32, 96, 4096)
    with torch.device("meta"):
        lm = LlamaForCausalLM(LLAMA2_7B)
    assert set(inventory.lm) == set(lm.state_dict())
    assert len(inventory.lora) == 2 * LAYERS
    # Every served audio tensor comes from the stage checkpoint, and every released key is
    # used or ignored with a reason.
    assert set(audio.state_dict()) == set(inventory.audio) == inventory.staged
    used = len(inventory.audio) + len(inventory.lm) + 2 * len(inventory.lora)
    ignored = sum(inventory.ignored.values())
    assert used + ignored + inventory.superseded == len(stage_keys()) + len(base_keys())


@pytest.mark.parametrize(
    "key",
    [
        "base_model.model.model.audio_encoder.blocks_a.10.mlp.fc2.weight",
        "base_model.model.model.Qformer.bert.encoder.layer.11.output_query.LayerNorm.bias",
        "base_model.model.model.layers.31.self_attn.q_proj.lora_A.default.weight",
    ],
)
def test_the_full_size_check_names_a_missing_key(key: str) -> None:
    stage = stage_keys()
    del stage[key]
    with pytest.raises(convert.CheckpointError, match=key.removeprefix("base_model.model.")):
        convert.check(_inventory(stage, base_keys()), LLAMA2_7B, GamaSettings())
