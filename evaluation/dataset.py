"""`router make-dataset`: a small labelled dataset synthesised locally, so the demo and the tests
need no download. Synthetic sound classes always; spoken sentences when espeak-ng is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
PROMPT = "What can be heard in this clip?"

SENTENCES = (
    "the cat sat on the mat",
    "please call me back tomorrow",
    "the weather is cold today",
    "open the door and come in",
    "we need more time to finish",
    "turn left at the next corner",
    "the train leaves at noon",
    "she reads a book every night",
    "my phone battery is low",
    "bring two cups of coffee",
    "the meeting starts in five minutes",
    "he plays the guitar very well",
)

REFERENCES = {
    "tone": "a steady pure tone",
    "chirp": "a rising chirp sweep",
    "noise": "a burst of white noise",
    "click": "a series of sharp clicks",
    "silence": "silence with no sound",
    "speech": "a person speaking",
}


@dataclass(frozen=True)
class DatasetSummary:
    manifest: Path
    clips: int
    speech: bool


def _tone(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return 0.5 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)


def _chirp(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    f0, f1 = rng.uniform(100, 500), rng.uniform(2000, 6000)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    wave_: np.ndarray = 0.5 * np.sin(phase)
    return wave_


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    envelope = np.ones(n)
    ramp = n // 10
    envelope[:ramp] = np.linspace(0, 1, ramp)
    envelope[-ramp:] = np.linspace(1, 0, ramp)
    return rng.normal(0, rng.uniform(0.1, 0.3), n) * envelope


def _click(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n)
    for start in rng.choice(n - 80, size=int(rng.integers(3, 10)), replace=False):
        out[start : start + 80] = np.exp(-np.arange(80) / 10) * rng.choice([-0.9, 0.9])
    return out


def _silence(rng: np.random.Generator, n: int) -> np.ndarray:
    # Not digital zero: a quiet noise floor, as real "silent" recordings have.
    return np.asarray(rng.normal(0, 1e-4, n))


SYNTHETIC = {
    "tone": _tone,
    "chirp": _chirp,
    "noise": _noise,
    "click": _click,
    "silence": _silence,
}


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def espeak() -> str | None:
    return shutil.which("espeak-ng")


def make_dataset(
    out: Path, per_class: int = 12, seed: int = 0, speech: bool | None = None
) -> DatasetSummary:
    """Writes `out/clips/*.wav` and `out/manifest.jsonl`. The same arguments give the same
    files. `speech=None` adds spoken sentences when espeak-ng is installed."""
    rng = np.random.default_rng(seed)
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for label, synth in SYNTHETIC.items():
        for i in range(per_class):
            n = int(SAMPLE_RATE * rng.uniform(0.5, 1.5))
            name = f"clips/{label}_{i:03d}.wav"
            write_wav(out / name, synth(rng, n))
            rows.append(
                {
                    "id": f"{label}_{i:03d}",
                    "audio": name,
                    "labels": [label],
                    "reference": REFERENCES[label],
                    "prompt": PROMPT,
                }
            )
    binary = espeak()
    if speech and binary is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with_speech = binary is not None and speech is not False
    if with_speech:
        assert binary is not None
        for i in range(per_class):
            text = SENTENCES[i % len(SENTENCES)]
            name = f"clips/speech_{i:03d}.wav"
            speed = str(int(rng.integers(130, 190)))
            subprocess.run(
                [binary, "-v", "en-us", "-s", speed, "-w", str(out / name), text],
                check=True,
                capture_output=True,
            )
            rows.append(
                {
                    "id": f"speech_{i:03d}",
                    "audio": name,
                    "labels": ["speech"],
                    "transcript": text,
                    "reference": REFERENCES["speech"],
                    "prompt": PROMPT,
                }
            )
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return DatasetSummary(manifest, len(rows), with_speech)
