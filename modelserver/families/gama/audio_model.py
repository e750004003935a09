"""GAMA's audio path, from filterbank to the LLM's 96-token prefix (the release's
`LlamaModel.forward`, `audio_input` branch).

- CAV-MAE tokens averaged over frequency and divided by 50: 64 time tokens.
- Two BERT layers (`audio_aggregator_layer_1/2`) over those tokens. As released, each layer
  computes a cross-attention to a tap and then discards it, so each is self-attention plus
  FFN over the previous output: that is what runs here.
- A BLIP-2 Q-Former (32 query tokens) cross-attending to `qformer_proj_norm(tokens)`.
- Each stream through a LayerNorm without affine, then Linear, GELU, Linear into the LLM width.
- The prefix is [Q-Former outputs ; aggregator outputs].

Every width, depth and count comes from the weights (`derive_dims`), so a tiny model in the
released layout and the 7B one run the same code. Head counts are not in the weights: they
are width / head_width (64 in every released module) unless model.yaml says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig, Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.bert.modeling_bert import BertLayer

from modelserver.families.gama.cavmae import CavMaeAudio, EncoderDims

BERT_LAYER_NORM_EPS = 1e-12  # bert-base-uncased's, which the aggregator and Q-Former use
PROJ_NORM_EPS = 1e-5
TOKEN_SCALE = 50.0  # the release divides the pooled tokens by 50


class DimsError(ValueError):
    """The weights do not form a GAMA audio path; the message names the tensor."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class BertDims:
    width: int
    heads: int
    intermediate: int
    layers: int = 1
    cross_every: int = 0
    encoder_width: int = 0
    queries: int = 0


@dataclass(frozen=True)
class AudioDims:
    encoder: EncoderDims
    aggregator: BertDims
    qformer: BertDims
    lm_width: int

    @property
    def prefix_tokens(self) -> int:
        return self.qformer.queries + self.encoder.grid[1]


def _heads(width: int, head_width: int, what: str) -> int:
    if width % head_width:
        raise DimsError(f"{what}: width {width} is not a multiple of head_width {head_width}")
    return width // head_width


def _indices(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> list[int]:
    found = (re.fullmatch(pattern, k) for k in shapes)
    return sorted({int(m.group(1)) for m in found if m})


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise DimsError(f"missing tensor {key}", key)
    return shapes[key]


def derive_dims(
    shapes: Mapping[str, tuple[int, ...]], num_mel_bins: int, max_frames: int, head_width: int = 64
) -> AudioDims:
    """Dimensions of the audio path from its tensors' shapes (served names)."""
    conv = _shape(shapes, "encoder.patch_embed_a.proj.weight")
    width, patch = conv[0], conv[2]
    if num_mel_bins % patch or max_frames % patch:
        raise DimsError(f"encoder: {patch}x{patch} patches do not tile {num_mel_bins}x{max_frames}")
    grid = (num_mel_bins // patch, max_frames // patch)
    tokens = _shape(shapes, "encoder.pos_embed_a")[1]
    if tokens != grid[0] * grid[1]:
        raise DimsError(f"encoder.pos_embed_a: {tokens} positions, the {grid} grid needs more")
    depth_a = len(_indices(shapes, r"encoder\.blocks_a\.(\d+)\.attn\.qkv\.weight"))
    depth_u = len(_indices(shapes, r"encoder\.blocks_u\.(\d+)\.attn\.qkv\.weight"))
    encoder = EncoderDims(
        width=width,
        heads=_heads(width, head_width, "encoder"),
        mlp=_shape(shapes, "encoder.blocks_a.0.mlp.fc1.weight")[0],
        patch=patch,
        grid=grid,
        depth_a=depth_a,
        depth_u=depth_u,
    )
    agg_width = _shape(shapes, "aggregator.0.attention.self.query.weight")[0]
    aggregator = BertDims(
        width=agg_width,
        heads=_heads(agg_width, head_width, "aggregator"),
        intermediate=_shape(shapes, "aggregator.0.intermediate.dense.weight")[0],
    )
    queries = _shape(shapes, "query_tokens")
    q_width = queries[2]
    layers = _indices(
        shapes, r"qformer\.encoder\.layer\.(\d+)\.attention\.attention\.query\.weight"
    )
    cross = _indices(
        shapes, r"qformer\.encoder\.layer\.(\d+)\.crossattention\.attention\.key\.weight"
    )
    every = cross[1] - cross[0] if len(cross) > 1 else max(len(layers), 1)
    if not cross or cross != list(range(0, len(layers), every)):
        raise DimsError(f"qformer: cross-attention in layers {cross} is not every n-th layer")
    qformer = BertDims(
        width=q_width,
        heads=_heads(q_width, head_width, "qformer"),
        intermediate=_shape(shapes, "qformer.encoder.layer.0.intermediate_query.dense.weight")[0],
        layers=len(layers),
        cross_every=every,
        encoder_width=_shape(shapes, "qformer.encoder.layer.0.crossattention.attention.key.weight")[
            1
        ],
        queries=queries[1],
    )
    lm_width = _shape(shapes, "proj_qformer.2.weight")[0]
    return AudioDims(encoder=encoder, aggregator=aggregator, qformer=qformer, lm_width=lm_width)


def _bert(dims: BertDims) -> dict[str, object]:
    """bert-base-uncased's settings at these widths, without dropout."""
    return {
        "hidden_size": dims.width,
        "num_attention_heads": dims.heads,
        "intermediate_size": dims.intermediate,
        "hidden_act": "gelu",
        "layer_norm_eps": BERT_LAYER_NORM_EPS,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def _aggregator_layer(dims: BertDims) -> BertLayer:
    config = BertConfig(**_bert(dims))
    config._attn_implementation = "sdpa"
    return BertLayer(config)


def _qformer(dims: BertDims) -> Blip2QFormerModel:
    config = Blip2QFormerConfig(
        **_bert(dims),
        num_hidden_layers=dims.layers,
        cross_attention_frequency=dims.cross_every,
        encoder_hidden_size=dims.encoder_width,
        use_qformer_text_input=False,
    )
    config._attn_implementation = "sdpa"
    return Blip2QFormerModel(config)


def _projection(width: int, lm_width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width))


@dataclass(frozen=True)
class AudioTokens:
    prefix: torch.Tensor
    """[B, queries + time tokens, lm width]: what goes before `<s>`."""
    aggregated: torch.Tensor
    """[B, time tokens, width]: the aggregator's output, before projection."""


class GamaAudio(nn.Module):
    def __init__(self, dims: AudioDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = CavMaeAudio(dims.encoder)
        self.aggregator = nn.ModuleList(_aggregator_layer(dims.aggregator) for _ in range(2))
        self.qformer = _qformer(dims.qformer)
        self.query_tokens = nn.Parameter(torch.zeros(1, dims.qformer.queries, dims.qformer.width))
        self.qformer_proj_norm = nn.LayerNorm(dims.encoder.width, eps=PROJ_NORM_EPS)
        self.proj_qformer = _projection(dims.qformer.width, dims.lm_width)
        self.proj_audioenc = _projection(dims.aggregator.width, dims.lm_width)

    def forward(self, fbank: torch.Tensor) -> AudioTokens:
        x = self.encoder(fbank)
        freq, time = self.dims.encoder.grid
        tokens = x.reshape(x.shape[0], freq, time, x.shape[-1]).mean(dim=1) / TOKEN_SCALE
        aggregated = tokens
        for layer in self.aggregator:
            aggregated = layer(aggregated)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        query_out = self.qformer(
            query_embeds=queries, encoder_hidden_states=self.qformer_proj_norm(tokens)
        ).last_hidden_state
        q = self.proj_qformer(F.layer_norm(query_out, query_out.shape[-1:], eps=PROJ_NORM_EPS))
        a = self.proj_audioenc(F.layer_norm(aggregated, aggregated.shape[-1:], eps=PROJ_NORM_EPS))
        return AudioTokens(prefix=torch.cat([q, a], dim=1), aggregated=aggregated)
