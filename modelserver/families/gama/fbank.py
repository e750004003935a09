"""GAMA's front end, as its `load_audio` computes it.

The release calls `torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)` on the mean-removed
waveform, pads or crops to 1024 frames and normalises with (x + 5.081) / 4.4849. No torchaudio
build matches our torch, so this is Kaldi's algorithm written out with torch ops, in the order
torchaudio applies them; tests check it against kaldi-native-fbank, an independent Kaldi port.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def _mel(freq: np.ndarray) -> np.ndarray:
    return np.asarray(1127.0 * np.log(1.0 + freq / 700.0))


@lru_cache(maxsize=16)
def mel_banks(num_bins: int, padded_window: int, sample_rate: float) -> torch.Tensor:
    """Kaldi's triangular mel filters, [num_bins, padded_window // 2 + 1] (Nyquist column 0).

    Computed in float64: Kaldi and torchaudio compute them in float32, whose rounding near a
    filter's edge moves a strong partial's band energy by up to ~5e-4 (relative), so exact
    weights are the fairest common target. With 128 bins at 16 kHz the fourth filter
    holds no FFT bin, so that channel of GAMA's input is always log(eps), as in the release.
    """
    nyquist = 0.5 * sample_rate
    fft_bin_width = sample_rate / padded_window
    mel_low, mel_high = _mel(np.array(LOW_FREQ)), _mel(np.array(nyquist))
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = np.arange(num_bins, dtype=np.float64)[:, None]
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    mel = _mel(fft_bin_width * np.arange(padded_window // 2, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.pad(np.maximum(0.0, np.minimum(up, down)), ((0, 0), (0, 1)))
    return torch.from_numpy(banks)


def kaldi_fbank(samples: np.ndarray, sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    """Log mel filterbank, [frames, num_mel_bins] float32, with the release's options:
    snip_edges, DC offset removed per frame, pre-emphasis 0.97, Hanning window, power
    spectrum, no dither, no energy, log floored at float32 epsilon."""
    # float64 inside: a pure tone leaves most bands with only window leakage, 1e-9 of the
    # frame's energy, where float32 rounding (torchaudio's and Kaldi's alike) moves the log by
    # up to 1e-2. The result is float32, as the release's is.
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float64))
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    padded = 1 << (window - 1).bit_length()
    if wave.numel() < window:
        return torch.zeros(0, num_mel_bins, dtype=torch.float32)
    frames = wave.unfold(0, window, shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - PREEMPHASIS * previous
    frames = frames * torch.hann_window(window, periodic=False, dtype=torch.float64)
    frames = torch.nn.functional.pad(frames, (0, padded - window))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = power @ mel_banks(num_mel_bins, padded, float(sample_rate)).T
    return torch.clamp_min(energies, torch.finfo(torch.float32).eps).log().float()


class GamaFrontEnd:
    """Mono samples at 16 kHz -> GAMA's normalised [max_frames, num_mel_bins] input."""

    def __init__(
        self,
        sample_rate: int,
        num_mel_bins: int = 128,
        max_frames: int = 1024,
        mean: float = -5.081,
        std: float = 4.4849,
    ) -> None:
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.max_frames = max_frames
        self.mean = mean
        self.std = std

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        # The release removes the clip's mean first; per-frame DC removal makes that a no-op
        # up to rounding, and it is kept so the arithmetic is the release's.
        centred = samples.astype(np.float32) - np.float32(samples.mean(dtype=np.float64))
        fbank = kaldi_fbank(centred, self.sample_rate, self.num_mel_bins)
        short = self.max_frames - fbank.shape[0]
        if short > 0:
            fbank = torch.nn.functional.pad(fbank, (0, 0, 0, short))
        fbank = fbank[: self.max_frames]
        return ((fbank - self.mean) / self.std).numpy()
