"""The served GAMA against an independent reading of the release (reference.py), on a tiny
checkpoint in the released layout: first-step logits in fp32, and greedy answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.audio import Audio
from modelserver.config import Task, load_model_config
from modelserver.families import load_family
from modelserver.families.gama.family import GamaFamily
from modelserver.messages import TEXT, AudioPayload, InferRequest
from tests.modelserver.gama.reference import Reference, load_audio
from tests.support.audio import tone

PROMPTS = ["What do you hear?", "Describe the sound events and when they happen."]


def clips() -> dict[str, np.ndarray]:
    rate = 16000
    t = np.arange(int(2.5 * rate)) / rate
    noise = np.random.default_rng(7).standard_normal(3 * rate) * 0.1
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t)
    return {
        "tone": tone(1.5, freq=523.0),
        "noise": noise.astype(np.float32),
        "chirp": chirp.astype(np.float32),
    }


@pytest.fixture(scope="module")
def served(tiny_models: Path) -> GamaFamily:
    family = load_family(tiny_models / "gama", load_model_config(tiny_models / "gama"), "cpu")
    assert isinstance(family, GamaFamily)
    return family


@pytest.fixture(scope="module")
def reference(tiny_models: Path) -> Reference:
    release = tiny_models / "gama-release"
    return Reference(
        release / "Llama-2-7b-chat-hf-qformer", release / "checkpoint-2500" / "pytorch_model.bin"
    )


def test_prompt_tokens_are_the_releases(served: GamaFamily, reference: Reference) -> None:
    for prompt in PROMPTS:
        assert served.prompt_ids(prompt) == reference.prompt_ids(prompt)[0].tolist()


@pytest.mark.parametrize("name", sorted(clips()))
def test_first_step_logits_match_the_release(
    served: GamaFamily, reference: Reference, name: str
) -> None:
    fbank = load_audio(clips()[name])
    lm = served.model.lm
    for prompt in PROMPTS:
        want = reference.first_logits(fbank, prompt)
        with torch.inference_mode():
            prefix = served.model.encode(fbank.unsqueeze(0)).prefix[0]
            ids = torch.tensor(served.prompt_ids(prompt))
            embeds = torch.cat([prefix, lm.get_input_embeddings()(ids)]).unsqueeze(0)
            got = lm(inputs_embeds=embeds).logits[0, -1].float()
        assert want.abs().max() > 0.5  # the comparison is not between near-zero vectors
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_greedy_answers_match_the_release(served: GamaFamily, reference: Reference) -> None:
    """Served end to end (our front end, one left-padded batch of six, transformers'
    generate) against the reference's own front end and its hand-written greedy loop."""
    limit = 20
    items, want = [], []
    for name, samples in sorted(clips().items()):
        for i, prompt in enumerate(PROMPTS):
            request = InferRequest(
                id=f"{name}-{i}",
                task=Task.DESCRIBE,
                audio=AudioPayload(),
                outputs=frozenset({TEXT}),
                prompt=prompt,
                max_new_tokens=limit,
                temperature=0.0,
            )
            items.append(served.prepare(request, Audio(samples, 16000, 16000)))
            tokens = reference.greedy(load_audio(samples), prompt, limit)
            want.append(reference.tokenizer.decode(tokens, skip_special_tokens=True).strip())
    got = [r[TEXT][0].decode() for r in served.run_batch(items)]
    assert got == want
    assert len(set(want)) > 1  # different clips and prompts give different answers
