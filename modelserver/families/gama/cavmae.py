"""CAV-MAE's audio branch as GAMA runs it (`CAVMAEFTAudio` in the release's cavmae.py).

A 16x16 patch convolution over the [128 mel, 1024 frame] filterbank gives an 8 x 64 grid of
512 tokens (frequency-major), plus `pos_embed_a` and `modality_a`; no CLS token. Then the
modality-specific `blocks_a` (their `norm1`/`norm2`), the shared `blocks_u` run with their
audio norms (`norm1_a`/`norm2_a`), and `norm_a`. Transformers' AST and ViT always prepend CLS
tokens, hence a module of our own. The release's taps (`norm_j`, `norm_k`) only feed the
aggregator's cross-attention, whose result it discards, so they are not computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which the release's timm blocks use


@dataclass(frozen=True)
class EncoderDims:
    width: int
    heads: int
    mlp: int
    patch: int
    grid: tuple[int, int]
    """(frequency, time) patches."""
    depth_a: int
    depth_u: int


class Attention(nn.Module):
    """timm's Attention: fused qkv with bias, scaled dot product, output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        projected: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return projected


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-LN transformer block. The release's block holds three norm pairs (shared, audio,
    video) and picks one by modality; `audio` selects `norm1_a`/`norm2_a`."""

    def __init__(self, width: int, heads: int, mlp: int, audio: bool) -> None:
        super().__init__()
        suffix = "_a" if audio else ""
        self.norm_names = (f"norm1{suffix}", f"norm2{suffix}")
        for name in self.norm_names:
            self.add_module(name, nn.LayerNorm(width, eps=LAYER_NORM_EPS))
        self.attn = Attention(width, heads)
        self.mlp = Mlp(width, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm1, norm2 = (getattr(self, name) for name in self.norm_names)
        x = x + self.attn(norm1(x))
        out: torch.Tensor = x + self.mlp(norm2(x))
        return out


class PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch, stride=patch)


class CavMaeAudio(nn.Module):
    """[B, frames, mel] normalised fbank -> [B, freq * time, width] tokens, frequency-major."""

    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        self.dims = dims
        w = dims.width
        self.patch_embed_a = PatchEmbed(w, dims.patch)
        self.pos_embed_a = nn.Parameter(torch.zeros(1, dims.grid[0] * dims.grid[1], w))
        self.modality_a = nn.Parameter(torch.zeros(1, 1, w))
        self.blocks_a = nn.ModuleList(
            Block(w, dims.heads, dims.mlp, audio=False) for _ in range(dims.depth_a)
        )
        self.blocks_u = nn.ModuleList(
            Block(w, dims.heads, dims.mlp, audio=True) for _ in range(dims.depth_u)
        )
        self.norm_a = nn.LayerNorm(w, eps=LAYER_NORM_EPS)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        # [B, T, F] -> [B, 1, F, T]: frequency is the image's height, time its width.
        x = self.patch_embed_a.proj(fbank.unsqueeze(1).transpose(2, 3))
        x = x.flatten(2).transpose(1, 2) + self.pos_embed_a + self.modality_a
        for block in self.blocks_a:
            x = block(x)
        for block in self.blocks_u:
            x = block(x)
        out: torch.Tensor = self.norm_a(x)
        return out
