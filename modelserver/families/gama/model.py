"""GAMA's network: AST encoder, an audio projector and a causal LM with an audio prefix."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ASTForAudioClassification, AutoModelForCausalLM, PreTrainedModel


def patch_grid(encoder: ASTForAudioClassification) -> tuple[int, int]:
    """(frequency, time) patch counts of the AST patch embedding."""
    c = encoder.config
    freq = (c.num_mel_bins - c.patch_size) // c.frequency_stride + 1
    time = (c.max_length - c.patch_size) // c.time_stride + 1
    return freq, time


class AudioProjector(nn.Module):
    """Patch tokens -> `num_tokens` audio tokens in the LM's embedding space.

    Frequency patches are averaged, time is pooled to a fixed prefix length, then a two-layer
    MLP maps into the LM width (GAMA's soft-prompt adapter, without its Q-Former).
    """

    def __init__(self, audio_dim: int, lm_dim: int, num_tokens: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.pool = nn.AdaptiveAvgPool1d(num_tokens)
        self.proj = nn.Sequential(
            nn.Linear(audio_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, _, h = patches.shape
        freq, time = self.grid
        x = patches.reshape(b, freq, time, h).mean(dim=1)
        x = self.pool(x.transpose(1, 2)).transpose(1, 2)
        out: torch.Tensor = self.proj(x)
        return out


@dataclass(frozen=True)
class Encoded:
    logits: torch.Tensor
    pooled: torch.Tensor
    patches: torch.Tensor


@dataclass(frozen=True)
class Decoding:
    prefix: torch.Tensor
    max_new_tokens: int
    temperature: float
    seed: int


class GamaModel:
    def __init__(
        self,
        encoder: ASTForAudioClassification,
        projector: AudioProjector,
        lm: PreTrainedModel,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.encoder = encoder.to(device, dtype).eval()
        self.projector = projector.to(device, dtype).eval()
        self.lm = lm.to(device, dtype).eval()
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(
        cls,
        encoder_dir: Path,
        lm_dir: Path,
        projector_path: Path,
        num_audio_tokens: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> GamaModel:
        encoder = ASTForAudioClassification.from_pretrained(encoder_dir)
        lm = AutoModelForCausalLM.from_pretrained(lm_dir)
        projector = build_projector(encoder, lm, num_audio_tokens)
        projector.load_state_dict(load_file(str(projector_path)))
        return cls(encoder, projector, lm, device, dtype)

    @torch.inference_mode()
    def encode(self, fbank: torch.Tensor) -> Encoded:
        out = self.encoder.audio_spectrogram_transformer(fbank.to(self.device, self.dtype))
        pooled = out.pooler_output
        logits = self.encoder.classifier(pooled)
        # Drop the CLS and distillation tokens: the projector wants the patch grid.
        return Encoded(logits=logits, pooled=pooled, patches=out.last_hidden_state[:, 2:])

    @torch.inference_mode()
    def audio_prefix(self, patches: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.projector(patches)
        return out

    @torch.inference_mode()
    def embed_tokens(self, ids: list[int]) -> torch.Tensor:
        table = self.lm.get_input_embeddings()
        out: torch.Tensor = table(torch.tensor(ids, device=self.device))
        return out

    @torch.inference_mode()
    def generate(
        self, requests: list[Decoding], eos_id: int, suppress: list[int], min_new_tokens: int
    ) -> list[list[int]]:
        """Batched KV-cached decoding with left padding; greedy at temperature 0.

        Position ids follow each row's own tokens, so a padded row decodes as it would alone.
        """
        b = len(requests)
        width = max(r.prefix.shape[0] for r in requests)
        dim = requests[0].prefix.shape[1]
        embeds = torch.zeros(b, width, dim, device=self.device, dtype=self.dtype)
        mask = torch.zeros(b, width, dtype=torch.long, device=self.device)
        for row, r in enumerate(requests):
            n = r.prefix.shape[0]
            embeds[row, width - n :] = r.prefix
            mask[row, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True
        )
        generators = [_generator(r.seed) if r.temperature > 0 else None for r in requests]
        tokens: list[list[int]] = [[] for _ in requests]
        done = [False] * b
        limit = max(r.max_new_tokens for r in requests)
        for step in range(limit):
            logits = out.logits[:, -1].float()
            logits[:, suppress] = -torch.inf
            if step < min_new_tokens:
                logits[:, eos_id] = -torch.inf
            picked = [
                _pick(logits[row], r.temperature, generators[row]) for row, r in enumerate(requests)
            ]
            for row, token in enumerate(picked):
                if done[row]:
                    continue
                if token == eos_id:
                    done[row] = True
                    continue
                tokens[row].append(token)
                done[row] = len(tokens[row]) >= requests[row].max_new_tokens
            if all(done):
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.lm(
                input_ids=torch.tensor(picked, device=self.device).unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return tokens


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0 or generator is None:
        return int(logits.argmax().item())
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator).item())


def request_seed(request_id: str) -> int:
    """Sampling is reproducible per request id."""
    return zlib.crc32(request_id.encode())


def build_projector(
    encoder: ASTForAudioClassification, lm: PreTrainedModel, num_audio_tokens: int
) -> AudioProjector:
    return AudioProjector(
        encoder.config.hidden_size, lm.config.hidden_size, num_audio_tokens, patch_grid(encoder)
    )


def save_projector(projector: AudioProjector, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(path))
