"""An independent reading of GAMA's release, for tests only.

Ported line by line from Sreyan88/GAMA (not from modelserver/): `gama_inf.py` (load_audio,
the prompt, the generation settings), and under hf-dev-train/.../models/llama/: `cavmae.py`
(CAVMAEFTAudio and its timm-style Block), `Qformer.py` (the LAVIS BERT with query tokens) and
`modeling_llama.py` (LlamaModel.forward's audio branch, its BertLayer). The LLM is transformers'
LlamaForCausalLM wrapped by peft with the release's LoraConfig, and the weights are loaded the
release's way: the base directory, then the stage checkpoint over it (stage wins).
The filterbank is a float64 numpy reading of torchaudio.compliance.kaldi.fbank, with the mel
filters built by Kaldi's own loop (strict inequalities, as in mel-computations.cc).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"  # templates/alpaca_short.json


# --- gama_inf.py: load_audio, after torchaudio.load and the resample to 16 kHz ---------------


def _kaldi_mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def kaldi_mel_banks(num_bins: int, padded: int, sample_freq: float) -> np.ndarray:
    """MelBanks::InitKaldiMelBanks, in float64."""
    num_fft_bins = padded // 2
    nyquist = 0.5 * sample_freq
    low, high = 20.0, nyquist
    fft_bin_width = sample_freq / padded
    mel_low, mel_high = _kaldi_mel(low), _kaldi_mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    banks = np.zeros((num_bins, num_fft_bins + 1))
    for b in range(num_bins):
        left, center, right = (mel_low + (b + i) * delta for i in range(3))
        for i in range(num_fft_bins):
            mel = _kaldi_mel(fft_bin_width * i)
            if left < mel < right:
                if mel <= center:
                    banks[b, i] = (mel - left) / (center - left)
                else:
                    banks[b, i] = (right - mel) / (right - center)
    return banks


def reference_fbank(waveform: np.ndarray, sr: int, num_mel_bins: int = 128) -> np.ndarray:
    """kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning', dither=0.0,
    frame_shift=10) on one channel, float64."""
    window = int(sr * 0.025)
    shift = int(sr * 0.010)
    padded = 1
    while padded < window:
        padded *= 2
    x = waveform.astype(np.float64)
    n = 1 + (len(x) - window) // shift if len(x) >= window else 0
    frames = np.stack([x[i * shift : i * shift + window] for i in range(n)])
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    shifted = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # replicate pad
    frames = frames - 0.97 * shifted  # preemphasis
    hanning = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(window) / (window - 1))
    frames = np.pad(frames * hanning, ((0, 0), (0, padded - window)))
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energies = power @ kaldi_mel_banks(num_mel_bins, padded, float(sr)).T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def load_audio(waveform: np.ndarray) -> torch.Tensor:
    """The release's load_audio on a 16 kHz mono waveform: [1024, 128]."""
    waveform = waveform - waveform.mean()
    fbank = torch.from_numpy(reference_fbank(waveform, 16000)).float()
    target_length = 1024
    n_frames = fbank.shape[0]
    p = target_length - n_frames
    if p > 0:
        m = torch.nn.ZeroPad2d((0, 0, 0, p))
        fbank = m(fbank)
    elif p < 0:
        fbank = fbank[0:target_length, :]
    fbank = (fbank + 5.081) / 4.4849
    return fbank


# --- cavmae.py -------------------------------------------------------------------------------


class Attention(nn.Module):  # timm.models.vision_transformer.Attention, qkv_bias=True
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):  # timm Mlp with nn.GELU
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm1_a = nn.LayerNorm(dim)
        self.norm1_v = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.norm2_a = nn.LayerNorm(dim)
        self.norm2_v = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        if modality is None:
            x = x + self.attn(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
        elif modality == "a":
            x = x + self.attn(self.norm1_a(x))
            x = x + self.mlp(self.norm2_a(x))
        x = x + 0.0 * (
            self.norm1(x)
            + self.norm2(x)
            + self.norm1_a(x)
            + self.norm2_a(x)
            + self.norm1_v(x)
            + self.norm2_v(x)
        )
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class CAVMAEFTAudio(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_hidden: int, patch_size: int) -> None:
        super().__init__()
        modality_specific_depth = 11
        self.patch_embed_a = PatchEmbed(patch_size, embed_dim)
        num_patches = int(1024 * 128 / 256)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.blocks_a = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_hidden) for i in range(modality_specific_depth)]
        )
        self.blocks_u = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_hidden) for i in range(12 - modality_specific_depth)]
        )
        self.norm_a = nn.LayerNorm(embed_dim)
        self.norm_j = nn.LayerNorm(embed_dim)
        self.norm_k = nn.LayerNorm(embed_dim)

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = a.unsqueeze(1)
        a = a.transpose(2, 3)
        a = self.patch_embed_a(a)
        a = a + self.pos_embed_a
        a = a + self.modality_a
        L = 12
        j = int(2 * L / 3)
        k = int(L / 3)
        for l, blk in enumerate(self.blocks_a):  # noqa: E741 (the release's name)
            a = blk(a)
            if l == j:
                intermediate_j = a.clone()
            if l == k:
                intermediate_k = a.clone()
        for blk in self.blocks_u:
            a = blk(a, "a")
        a = self.norm_a(a)
        return a, self.norm_j(intermediate_j), self.norm_k(intermediate_k)


# --- Qformer.py (and the aggregator's BertLayer from modeling_llama.py) ----------------------


class BertConfig:
    def __init__(self, hidden: int, intermediate: int, encoder_width: int, layers: int = 1) -> None:
        self.hidden_size = hidden
        self.num_attention_heads = hidden // 64
        self.intermediate_size = intermediate
        self.encoder_width = encoder_width
        self.layer_norm_eps = 1e-12
        self.num_hidden_layers = layers
        self.cross_attention_freq = 2


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig, is_cross_attention: bool) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        if is_cross_attention:
            self.key = nn.Linear(config.encoder_width, self.all_head_size)
            self.value = nn.Linear(config.encoder_width, self.all_head_size)
        else:
            self.key = nn.Linear(config.hidden_size, self.all_head_size)
            self.value = nn.Linear(config.hidden_size, self.all_head_size)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(*x.size()[:-1], self.num_attention_heads, self.attention_head_size)
        return x.permute(0, 2, 1, 3)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
    ):  # type: ignore[no-untyped-def]
        is_cross_attention = encoder_hidden_states is not None
        if is_cross_attention:
            key_layer = self.transpose_for_scores(self.key(encoder_hidden_states))
            value_layer = self.transpose_for_scores(self.value(encoder_hidden_states))
            attention_mask = encoder_attention_mask
        else:
            key_layer = self.transpose_for_scores(self.key(hidden_states))
            value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        attention_probs = nn.Softmax(dim=-1)(attention_scores)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        return context_layer.view(*context_layer.size()[:-2], self.all_head_size)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention)
        self.output = BertSelfOutput(config)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
    ):  # type: ignore[no-untyped-def]
        self_outputs = self.self(
            hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask
        )
        return self.output(self_outputs, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(hidden_states))  # ACT2FN["gelu"]


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + input_tensor)


class QformerLayer(nn.Module):  # Qformer.py BertLayer
    def __init__(self, config: BertConfig, layer_num: int) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.has_cross_attention = layer_num % config.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate_query = BertIntermediate(config)
        self.output_query = BertOutput(config)

    def forward(
        self,
        hidden_states,
        attention_mask,
        encoder_hidden_states,
        encoder_attention_mask,
        query_length,
    ):  # type: ignore[no-untyped-def]
        attention_output = self.attention(hidden_states, attention_mask)
        query_attention_output = attention_output[:, :query_length, :]
        if self.has_cross_attention:
            query_attention_output = self.crossattention(
                query_attention_output,
                attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
            )
        intermediate_output = self.intermediate_query(query_attention_output)
        return self.output_query(intermediate_output, query_attention_output)


class QformerBert(nn.Module):  # Qformer.py BertModel, query embeddings only
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embeddings.register_buffer("position_ids", torch.arange(512).expand((1, -1)))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            [QformerLayer(config, i) for i in range(config.num_hidden_layers)]
        )

    def forward(self, query_embeds, encoder_hidden_states, encoder_attention_mask):  # type: ignore[no-untyped-def]
        embedding_output = self.embeddings.LayerNorm(query_embeds)
        batch_size, seq_length = embedding_output.shape[:2]
        attention_mask = torch.ones((batch_size, seq_length))
        extended_attention_mask = (1.0 - attention_mask[:, None, None, :]) * -10000.0
        encoder_extended_attention_mask = (
            1.0 - encoder_attention_mask[:, None, None, :]
        ) * -10000.0
        hidden_states = embedding_output
        for layer in self.encoder.layer:
            hidden_states = layer(
                hidden_states,
                extended_attention_mask,
                encoder_hidden_states,
                encoder_extended_attention_mask,
                query_embeds.shape[1],
            )
        return hidden_states


class AggregatorLayer(nn.Module):  # modeling_llama.py BertLayer
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.intermediate_query = BertIntermediate(config)
        self.output_query = BertOutput(config)

    def forward(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask):  # type: ignore[no-untyped-def]
        attention_output = self.attention(hidden_states, attention_mask)
        self.crossattention(
            attention_output, attention_mask, encoder_hidden_states, encoder_attention_mask
        )
        intermediate_output = self.intermediate(attention_output)
        return self.output(intermediate_output, attention_output)


# --- modeling_llama.py LlamaModel: the audio branch, and the release's loading -------------


class ReleasedGama(nn.Module):
    def __init__(self, stage: dict[str, torch.Tensor], llama: LlamaConfig) -> None:
        super().__init__()

        def shape(key: str) -> tuple[int, ...]:
            return tuple(stage["base_model.model.model." + key].shape)

        width, _, patch, _ = shape("audio_encoder.patch_embed_a.proj.weight")
        mlp = shape("audio_encoder.blocks_a.0.mlp.fc1.weight")[0]
        q_width = shape("query_tokens")[2]
        q_layers = 1 + max(
            int(k.split(".")[7]) for k in stage if ".Qformer.bert.encoder.layer." in k
        )
        self.audio_encoder = CAVMAEFTAudio(width, width // 64, mlp, patch)
        self.Qformer = nn.Module()
        self.Qformer.bert = QformerBert(
            BertConfig(
                q_width,
                shape("Qformer.bert.encoder.layer.0.intermediate_query.dense.weight")[0],
                width,
                q_layers,
            )
        )
        self.query_tokens = nn.Parameter(torch.zeros(shape("query_tokens")))
        self.qformer_proj_norm = nn.LayerNorm(width)
        out = llama.hidden_size
        self.audio_proj_norm_qformer = nn.LayerNorm(q_width, elementwise_affine=False)
        self.audio_proj_qformer = nn.Sequential(
            nn.Linear(q_width, out), nn.GELU(), nn.Linear(out, out)
        )
        self.audio_proj_norm_audioenc = nn.LayerNorm(q_width, elementwise_affine=False)
        self.audio_proj_audioenc = nn.Sequential(
            nn.Linear(q_width, out), nn.GELU(), nn.Linear(out, out)
        )
        bert = BertConfig(
            width, shape("audio_aggregator_layer_1.intermediate.dense.weight")[0], width
        )
        self.audio_aggregator_layer_1 = AggregatorLayer(bert)
        self.audio_aggregator_layer_2 = AggregatorLayer(bert)

    def forward(self, audio_input: torch.Tensor) -> torch.Tensor:
        audio_input, aj, ak = self.audio_encoder(audio_input)
        aj = aj.reshape(aj.shape[0], 8, 64, aj.shape[-1])
        aj = torch.mean(aj, dim=1)
        aj = aj / 50
        ak = ak.reshape(ak.shape[0], 8, 64, aj.shape[-1])
        ak = torch.mean(ak, dim=1)
        ak = ak / 50
        audio_input = audio_input.reshape(audio_input.shape[0], 8, 64, audio_input.shape[-1])
        audio_input = torch.mean(audio_input, dim=1)
        audio_input = audio_input / 50
        zeros = torch.zeros(
            aj.shape[0], 1, 1, aj.shape[1]
        )  # get_bert_extended_attention_mask(ones)
        first = self.audio_aggregator_layer_1(audio_input, zeros, aj, zeros)
        aggregated = self.audio_aggregator_layer_2(first, zeros, ak, zeros)
        audio_input_for_qformer = self.qformer_proj_norm(audio_input)
        audio_atts = torch.ones(audio_input_for_qformer.size()[:-1], dtype=torch.long)
        query_tokens = self.query_tokens.expand(audio_input_for_qformer.shape[0], -1, -1)
        query_output = self.Qformer.bert(query_tokens, audio_input_for_qformer, audio_atts)
        query_output = self.audio_proj_qformer(self.audio_proj_norm_qformer(query_output))
        audio_aggregated = self.audio_proj_audioenc(self.audio_proj_norm_audioenc(aggregated))
        return torch.cat([query_output, audio_aggregated], dim=1)


class Reference:
    """The release loaded as gama_inf.py loads it, with greedy decoding by hand."""

    def __init__(self, base: Path, stage_bin: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        config = LlamaConfig.from_pretrained(base)
        llm = LlamaForCausalLM(config)
        index = json.loads((base / "model.safetensors.index.json").read_text())
        base_sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            base_sd.update(load_file(str(base / shard)))
        stage = torch.load(stage_bin, map_location="cpu", weights_only=True)
        self.audio = ReleasedGama(stage, config).eval()
        # from_pretrained(base): the LLaMA weights and the Q-Former shard.
        missing = llm.load_state_dict(
            {
                k: v
                for k, v in base_sd.items()
                if not k.startswith("model.Qformer")
                and "query_tokens" not in k
                and "qformer_proj_norm" not in k
            },
            strict=False,
        )
        assert not missing.missing_keys and not missing.unexpected_keys, missing
        audio_sd = {
            k[len("model.") :]: v
            for k, v in base_sd.items()
            if k.startswith(("model.Qformer", "model.query_tokens", "model.qformer_proj_norm"))
        }
        self.audio.load_state_dict(audio_sd, strict=False)
        # get_peft_model, then load_state_dict(stage, strict=False): the stage wins.
        self.llm = get_peft_model(
            llm,
            LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=["q_proj", "v_proj"],
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            ),
        ).eval()
        result = self.llm.load_state_dict(
            {k: v for k, v in stage.items() if "lora" in k}, strict=False
        )
        assert not result.unexpected_keys, result.unexpected_keys
        prefix = "base_model.model.model."
        audio_stage = {k[len(prefix) :]: v for k, v in stage.items() if "lora" not in k}
        result = self.audio.load_state_dict(audio_stage, strict=False)
        assert not result.unexpected_keys and not result.missing_keys, result

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        return self.tokenizer(PROMPT.format(instruction=instruction), return_tensors="pt")[
            "input_ids"
        ]

    @torch.no_grad()
    def first_logits(self, fbank: torch.Tensor, instruction: str) -> torch.Tensor:
        prefix = self.audio(fbank.unsqueeze(0))
        input_ids = self.prompt_ids(instruction)
        embeds = torch.cat([prefix, self.llm.get_input_embeddings()(input_ids)], dim=1)
        return self.llm(inputs_embeds=embeds).logits[0, -1]

    @torch.no_grad()
    def greedy(
        self, fbank: torch.Tensor, instruction: str, max_new_tokens: int, penalty: float = 1.1
    ) -> list[int]:
        """Temperature -> 0 of the release's sampling: argmax after its repetition penalty
        (top-k and top-p keep the argmax). Full recompute each step, no cache."""
        prefix = self.audio(fbank.unsqueeze(0))
        input_ids = self.prompt_ids(instruction)
        eos = self.tokenizer.eos_token_id
        new: list[int] = []
        for _ in range(max_new_tokens):
            embeds = torch.cat([prefix, self.llm.get_input_embeddings()(input_ids)], dim=1)
            scores = self.llm(inputs_embeds=embeds).logits[0, -1].float()
            seen = input_ids[0]
            score = torch.gather(scores, 0, seen)
            score = torch.where(score < 0, score * penalty, score / penalty)
            scores = scores.scatter(0, seen, score)
            token = int(scores.argmax())
            if token == eos:
                break
            new.append(token)
            input_ids = torch.cat([input_ids, torch.tensor([[token]])], dim=1)
        return new
