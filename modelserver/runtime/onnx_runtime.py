"""ONNX Runtime sessions on CUDA only when a CUDA session really starts, else on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelserver.runtime import Placement

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class DeviceUnavailableError(RuntimeError):
    """`--device cuda` was asked for and CUDA does not work here."""


def _options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning workers burn the cores that gRPC and decoding need (docs/benchmarks.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The model server logs its own choice; ORT's provider fallback warnings are noise.
    opts.log_severity_level = 3
    return opts


def _try_cuda(path: Path, threads: int) -> ort.InferenceSession | None:
    # onnxruntime-gpu lists the CUDA provider even where no GPU or driver exists, and a session
    # asked for CUDA silently falls back to the CPU: only the session's own providers tell.
    if CUDA not in ort.get_available_providers():
        return None
    # A failed CUDA load is expected on CPU machines; keep ORT from logging it as an error.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), _options(threads), providers=[CUDA, CPU])
    except Exception as exc:
        log.info("onnx CUDA session did not start: %s", exc)
        return None
    if session.get_providers()[0] != CUDA:
        return None
    return session


def open_session(
    path: Path, device: str, threads: int = 0
) -> tuple[ort.InferenceSession, Placement]:
    """Open `path` on the best provider allowed by `device` (auto, cpu or cuda)."""
    if device in ("auto", "cuda"):
        session = _try_cuda(path, threads)
        if session is not None:
            return session, Placement("onnx", "cuda", CUDA)
        if device == "cuda":
            raise DeviceUnavailableError(
                "--device cuda: ONNX Runtime could not start a CUDA session on this machine"
            )
    session = ort.InferenceSession(str(path), _options(threads), providers=[CPU])
    return session, Placement("onnx", "cpu", CPU)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[Any]:
    return list(session.run(None, feeds))
