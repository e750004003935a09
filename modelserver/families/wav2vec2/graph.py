"""The serving graph: one forward gives logits, last hidden states and valid frame counts.

The same module is exported to ONNX and run by the torch runtime, so both agree by design.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification

INPUT_NAMES = ["input_values", "attention_mask"]
OUTPUT_NAMES = ["logits", "hidden", "frames"]


class Wav2Vec2Serving(torch.nn.Module):
    def __init__(self, model: Wav2Vec2ForCTC | Wav2Vec2ForSequenceClassification) -> None:
        super().__init__()
        self.model = model
        # Group-norm feature encoders (wav2vec2-base) were trained without a mask: padded
        # samples are zeros and the mask only counts the valid frames.
        self.pass_mask = model.config.feat_extract_norm == "layer"

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(
            input_values,
            attention_mask=attention_mask if self.pass_mask else None,
            output_hidden_states=True,
        )
        frames = self.model._get_feat_extract_output_lengths(attention_mask.sum(-1))
        return out.logits, out.hidden_states[-1], frames


def load_checkpoint(
    checkpoint: str | Path, attn_implementation: str | None = None
) -> Wav2Vec2ForCTC | Wav2Vec2ForSequenceClassification:
    """A CTC or sequence-classification checkpoint, chosen by its config's architecture."""
    config = AutoConfig.from_pretrained(checkpoint)
    arch = (config.architectures or ["Wav2Vec2ForCTC"])[0]
    cls = Wav2Vec2ForSequenceClassification if "SequenceClassification" in arch else Wav2Vec2ForCTC
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = cls.from_pretrained(checkpoint, **kwargs)
    model.eval()
    return model
