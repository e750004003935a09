"""Reading checkpoint files one at a time: safetensors lazily, PyTorch pickles memory-mapped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

_ITEM_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
_ITEM_BYTES |= {"U8": 1, "I8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class TensorFile:
    """One weights file; tensors are read when asked for, so a 10 GB shard is never copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".safetensors":
            self._safe: Any = safe_open(str(path), framework="pt")
            self.names: list[str] = list(self._safe.keys())  # type: ignore[no-untyped-call]
            self._pickled: dict[str, torch.Tensor] | None = None
        else:
            loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            if not isinstance(loaded, dict) or not all(
                isinstance(v, torch.Tensor) for v in loaded.values()
            ):
                raise ValueError(f"{path}: not a state dict of tensors")
            self._pickled = loaded
            self.names = list(loaded)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._pickled is not None:
            return tuple(self._pickled[key].shape)
        return tuple(self._safe.get_slice(key).get_shape())

    def nbytes(self, key: str) -> int:
        if self._pickled is not None:
            return self._pickled[key].nbytes
        piece = self._safe.get_slice(key)
        return int(math.prod(piece.get_shape())) * _ITEM_BYTES[str(piece.get_dtype())]

    def get(self, key: str) -> torch.Tensor:
        if self._pickled is not None:
            return self._pickled[key]
        tensor: torch.Tensor = self._safe.get_tensor(key)
        return tensor


def shard_files(directory: Path) -> list[Path]:
    """The weight files of a transformers model directory, in index order when indexed."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = directory / index
        if path.is_file():
            weight_map: dict[str, str] = json.loads(path.read_text())["weight_map"]
            return [directory / name for name in dict.fromkeys(weight_map.values())]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    return sorted(
        p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
