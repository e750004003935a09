"""A served GAMA model directory loaded onto a device: audio path, LLaMA, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from modelserver.config import GamaSettings
from modelserver.families.gama.audio_model import AudioTokens, GamaAudio, derive_dims


@dataclass
class GamaModel:
    audio: GamaAudio
    lm: LlamaForCausalLM
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(
        cls, model_dir: Path, settings: GamaSettings, device: torch.device, dtype: torch.dtype
    ) -> GamaModel:
        tensors = load_file(str(model_dir / settings.audio))
        dims = derive_dims(
            {k: tuple(v.shape) for k, v in tensors.items()},
            settings.num_mel_bins,
            settings.max_frames,
            settings.head_width,
        )
        with torch.device("meta"):
            audio = GamaAudio(dims)
        audio.load_state_dict(tensors, strict=True, assign=True)
        lm = LlamaForCausalLM.from_pretrained(model_dir / settings.lm, dtype=dtype)
        if lm.config.hidden_size != dims.lm_width:
            raise ValueError(
                f"gama.audio projects to width {dims.lm_width}; the LLM's hidden_size is "
                f"{lm.config.hidden_size}"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_dir / settings.tokenizer)
        if tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
            raise ValueError("gama.tokenizer: the tokenizer needs <s> and </s> tokens")
        return cls(
            audio=audio.to(device, dtype).eval(),
            lm=lm.to(device).eval(),
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
        )

    @torch.inference_mode()
    def encode(self, fbank: torch.Tensor) -> AudioTokens:
        tokens: AudioTokens = self.audio(fbank.to(self.device, self.dtype))
        return tokens
