"""Rehearsal models (modelserver/tiny/full_size.py): the streamed safetensors writer against
the safetensors library's own reader, shards split as `save_pretrained` splits them, and the
sizes against the published parameter counts. The full-size run itself is `make rehearsal`
(tens of GB; not part of the suite)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelserver.tiny.full_size import _shards, gama_release_bytes, write_streamed

MODELSERVER = str(Path(sys.executable).with_name("modelserver"))


def _values(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    return (torch.arange(math.prod(shape), dtype=torch.float64) * 0.25 - len(name)).reshape(shape)


def test_a_streamed_file_reads_back_with_safetensors(tmp_path: Path) -> None:
    specs = [
        ("model.embed_tokens.weight", (7, 5), torch.float16),
        ("model.Qformer.bert.embeddings.position_ids", (1, 9), torch.int64),
        ("model.norm.weight", (3,), torch.float32),
    ]
    seen: list[int] = []
    sizes = write_streamed(tmp_path / "x.safetensors", specs, _values, progress=seen.append)
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert set(loaded) == set(sizes)
    for name, shape, dtype in specs:
        assert loaded[name].dtype == dtype and tuple(loaded[name].shape) == shape
        assert torch.equal(loaded[name], _values(name, shape).to(dtype)), name
        assert sizes[name] == loaded[name].nbytes
    assert seen == [sizes[name] for name, _, _ in specs]
    raw = (tmp_path / "x.safetensors").read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    assert header_size % 8 == 0
    assert json.loads(raw[8 : 8 + header_size])["__metadata__"] == {"format": "pt"}


def test_shards_split_in_order_at_the_limit() -> None:
    specs = [(f"t{i}", (10,), torch.float16) for i in range(5)] + [("big", (100,), torch.float16)]
    shards = _shards(specs, 50)  # 20 bytes each: two fit, a third would pass 50
    assert [[name for name, _, _ in shard] for shard in shards] == [
        ["t0", "t1"], ["t2", "t3"], ["t4"], ["big"]
    ]  # fmt: skip


def test_sizes_are_the_published_ones(tmp_path: Path) -> None:
    # LLaMA-2-7B: 6,738,415,616 parameters (its Hugging Face model card), float16 shards.
    assert gama_release_bytes("7b") == 2 * 6_738_415_616
    done = subprocess.run(
        [MODELSERVER, "make-rehearsal", "--family", "wav2vec2", "--out", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (768, 12)
    assert config["feat_extract_norm"] == "group"
    # facebook/wav2vec2-base-960h: 94,396,320 parameters.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    refused = subprocess.run(
        [MODELSERVER, "make-rehearsal", "--family", "wav2vec2", "--out", str(blocked / "w")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "Not a directory" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    weights = load_file(str(tmp_path / "w" / "model.safetensors"))
    assert sum(t.numel() for t in weights.values()) == 94_396_320
