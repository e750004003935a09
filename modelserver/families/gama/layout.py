"""GAMA's released key names, and where each goes in a served model directory.

Read from the release: `LlamaModel.__init__` in its modeling_llama.py names the audio modules,
`Trainer._save` keeps the parameters whose names hold 'lora', 'audio', 'qformer', 'Qformer' or
'query_tokens' (under PEFT's `base_model.model.`), and the base directory
`Llama-2-7b-chat-hf-qformer` holds HF LLaMA shards plus `model.Qformer.*`,
`model.query_tokens` and `model.qformer_proj_norm.*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PEFT_PREFIX = "base_model.model."

# Released prefix -> served prefix, for the audio path (audio.safetensors).
AUDIO_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.audio_encoder.", "encoder."),
    ("model.audio_aggregator_layer_1.", "aggregator.0."),
    ("model.audio_aggregator_layer_2.", "aggregator.1."),
    ("model.Qformer.bert.", "qformer."),
    ("model.query_tokens", "query_tokens"),
    ("model.qformer_proj_norm.", "qformer_proj_norm."),
    ("model.audio_proj_qformer.", "proj_qformer."),
    ("model.audio_proj_audioenc.", "proj_audioenc."),
)

# The release's LAVIS-style Q-Former against transformers' Blip2QFormerModel.
QFORMER_RENAMES: tuple[tuple[str, str], ...] = (
    ("embeddings.LayerNorm.", "layernorm."),
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)

# Keys of the release that its forward never reads, each with the reason.
IGNORED: tuple[tuple[str, str], ...] = (
    (
        r"model\.audio_encoder\.blocks_a\.\d+\.norm[12]_[av]\.",
        "blocks_a run with norm1/norm2; the release adds its other norms times 0.0",
    ),
    (
        r"model\.audio_encoder\.blocks_u\.\d+\.norm[12](_v)?\.",
        "blocks_u run with norm1_a/norm2_a; the release adds its other norms times 0.0",
    ),
    (
        r"model\.audio_encoder\.norm_[jk]\.",
        "the encoder taps feed only the aggregator's discarded cross-attention",
    ),
    (
        r"model\.audio_aggregator_layer_[12]\.crossattention\.",
        "the aggregator's cross-attention result is discarded, as released",
    ),
    (
        r"model\.audio_aggregator_layer_[12]\.(intermediate|output)_query\.",
        "the aggregator never calls its query feed-forward",
    ),
    (
        r"model\.Qformer\.bert\.embeddings\.(position_ids|word_embeddings\.|position_embeddings\.)",
        "the Q-Former's text embeddings: GAMA feeds it query embeddings only",
    ),
    (
        r"model\.Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.",
        "the Q-Former's text feed-forward: query tokens use intermediate_query/output_query",
    ),
    (r"model\.Qformer\.cls\.", "the Q-Former's BERT LM head, which GAMA removes"),
    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "rotary tables: from config.json"),
)
_IGNORED = tuple((re.compile(pattern), reason) for pattern, reason in IGNORED)

LM_KEY = re.compile(
    r"(model\.(embed_tokens|norm|layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj"
    r"|input_layernorm|post_attention_layernorm))\.weight|lm_head\.weight)"
)
LORA_KEY = re.compile(
    r"model\.layers\.(\d+)\.self_attn\.([a-z_]+)\.lora_([AB])(\.default)?\.weight"
)
LORA_TARGETS = ("q_proj", "v_proj")
RELEASED_LORA_ALPHA = 16  # gama_inf.py: LoraConfig(r=8, lora_alpha=16, q_proj and v_proj)


@dataclass(frozen=True)
class Placed:
    kind: str
    """'audio', 'lm', 'lora' or 'ignored'."""
    name: str
    """The served name (for lora: the LM weight it adapts; for ignored: the reason)."""
    part: str = ""
    """'A' or 'B' for LoRA factors."""


def unwrap(key: str) -> str:
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


def place(key: str) -> Placed | None:
    """Where a released key goes, or None for a key GAMA's release does not have."""
    key = unwrap(key)
    for pattern, reason in _IGNORED:
        if pattern.match(key):
            return Placed("ignored", reason)
    for released, served in AUDIO_PREFIXES:
        if key == released or (released.endswith(".") and key.startswith(released)):
            name = served + key[len(released) :]
            if served == "qformer.":
                for old, new in QFORMER_RENAMES:
                    name = name.replace(old, new, 1) if old in name else name
            return Placed("audio", name)
    lora = LORA_KEY.fullmatch(key)
    if lora:
        layer, module, part = lora.group(1), lora.group(2), lora.group(3)
        return Placed("lora", f"model.layers.{layer}.self_attn.{module}.weight", part)
    if LM_KEY.fullmatch(key):
        return Placed("lm", key)
    return None


def released_audio_name(served: str) -> str:
    """The released name (without PEFT's prefix) of a served audio tensor, for messages."""
    for released, prefix in AUDIO_PREFIXES:
        if served == prefix or (prefix.endswith(".") and served.startswith(prefix)):
            rest = served[len(prefix) :]
            if prefix == "qformer.":
                for old, new in QFORMER_RENAMES:
                    rest = ("." + rest).replace(new, old, 1)[1:] if new in "." + rest else rest
            return released + rest
    return served
