"""GAMA's input features: Kaldi-compatible 128-bin log-mel fbank, 10 ms shift, Hanning window,
padded or cropped to 1024 frames, normalised with GAMA's constants."""

from __future__ import annotations

import warnings

import numpy as np
from transformers import ASTFeatureExtractor

from modelserver.config import GamaSettings


class GamaFeatures:
    def __init__(self, settings: GamaSettings, sample_rate: int) -> None:
        # ASTFeatureExtractor normalises as (x - mean) / (2 * std); GAMA divides by 4.4849.
        with warnings.catch_warnings():
            # 128 Kaldi bins at 16 kHz leave one empty low filter, exactly as in AST and GAMA.
            warnings.filterwarnings("ignore", message="At least one mel filter")
            self.extractor = self._extractor(settings, sample_rate)
        self.sample_rate = sample_rate

    @staticmethod
    def _extractor(settings: GamaSettings, sample_rate: int) -> ASTFeatureExtractor:
        return ASTFeatureExtractor(
            feature_size=1,
            sampling_rate=sample_rate,
            num_mel_bins=settings.num_mel_bins,
            max_length=settings.max_frames,
            mean=settings.fbank_mean,
            std=settings.fbank_std / 2,
            do_normalize=True,
            return_attention_mask=False,
        )

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """[frames, mel bins] float32 for one mono clip at the model's rate."""
        out = self.extractor(samples, sampling_rate=self.sample_rate, return_tensors="np")
        return np.asarray(out["input_values"][0], dtype=np.float32)
