"""GAMA's front end against two independent Kaldi readings: kaldi-native-fbank (C++), and the
float64 port of torchaudio's kaldi.fbank in reference.py (for 128 bins at 16 kHz, which
kaldi-native-fbank refuses because the lowest filter holds no FFT bin)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import soxr

from modelserver.families.gama.fbank import GamaFrontEnd, kaldi_fbank
from tests.modelserver.gama.reference import load_audio, reference_fbank

# (rate, mel bins) that kaldi-native-fbank accepts at each rate.
RATES = [(8000, 64), (16000, 80), (44100, 80)]


def _knf(samples: np.ndarray, rate: int, bins: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.htk_compat = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(rate, samples.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def _speech(rate: int, tmp: Path) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech clip")
    path = tmp / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    subprocess.run([binary, "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    samples, native = sf.read(path, dtype="float32")
    return soxr.resample(samples, native, rate).astype(np.float32)


def _clip(kind: str, rate: int, tmp: Path) -> np.ndarray:
    t = np.arange(int(2.3 * rate)) / rate
    if kind == "speech":
        return _speech(rate, tmp)
    if kind == "tone":
        wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 1364 * t)
    elif kind == "noise":
        wave = 0.1 * np.random.default_rng(rate).standard_normal(t.size)
    else:
        wave = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    return wave.astype(np.float32)


@pytest.mark.parametrize("kind", ["speech", "tone", "noise"])
@pytest.mark.parametrize(("rate", "bins"), RATES)
def test_matches_kaldi_native_fbank(kind: str, rate: int, bins: int, tmp_path: Path) -> None:
    samples = _clip(kind, rate, tmp_path)
    ours = kaldi_fbank(samples, rate, bins).numpy()
    theirs = _knf(samples, rate, bins)
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)
    # kaldi-native-fbank computes in float32 (so do Kaldi and torchaudio): in bands that hold
    # only window leakage, and where a strong partial sits near a filter's edge, its rounding
    # moves the 4th decimal. Ours is float64 inside (checked to 1e-4 everywhere below).
    strong = theirs >= theirs.max(axis=1, keepdims=True) + np.log(1e-4)
    assert strong.mean() > 0.1
    assert np.quantile(diff[strong], 0.999) <= 1e-4
    assert diff.max() <= 1e-3, diff.max()
    np.testing.assert_allclose(ours, reference_fbank(samples, rate, bins), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["speech", "tone", "noise", "chirp"])
def test_gamas_filterbank_matches_the_float64_reading(kind: str, tmp_path: Path) -> None:
    samples = _clip(kind, 16000, tmp_path)
    ours = kaldi_fbank(samples, 16000, 128).numpy()
    want = reference_fbank(samples, 16000, 128)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
    # 128 filters at 16 kHz leave the fourth one without an FFT bin (why kaldi-native-fbank
    # refuses them): in GAMA's input that channel is always log(eps).
    np.testing.assert_allclose(ours[:, 3], np.log(np.finfo(np.float32).eps), rtol=1e-6)


@pytest.mark.parametrize("seconds", [0.3, 4.0, 12.0])
def test_front_end_is_load_audio(seconds: float) -> None:
    """Mean removed, padded or cropped to 1024 frames, (x + 5.081) / 4.4849."""
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (0.2 * np.sin(2 * np.pi * 300 * t) + 0.01).astype(np.float32)
    ours = GamaFrontEnd(16000)(samples)
    want = load_audio(samples).numpy()
    assert ours.shape == want.shape == (1024, 128)
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=0)
