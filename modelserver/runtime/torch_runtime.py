"""PyTorch placement: CUDA when it really works, else the CPU; half precision only on CUDA."""

from __future__ import annotations

import logging

import torch

from modelserver.runtime import Placement
from modelserver.runtime.onnx_runtime import DeviceUnavailableError

log = logging.getLogger(__name__)


def _cuda_works() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        x = torch.ones(4, device="cuda")
        return bool((x + x).sum().item() == 8.0)
    except Exception as exc:
        log.warning("torch reports CUDA but a kernel did not run: %s", exc)
        return False


def cuda_works(device: str) -> bool:
    """Whether `device` ("auto", "cpu", "cuda") will place the model on CUDA."""
    return device in ("auto", "cuda") and _cuda_works()


def select_device(
    device: str,
    fp16: bool = False,
    threads: int = 0,
    cuda_dtype: torch.dtype | None = None,
    cpu_dtype: torch.dtype = torch.float32,
) -> tuple[torch.device, torch.dtype, Placement]:
    """`cuda_dtype` (or float16 with `fp16`) applies on CUDA, `cpu_dtype` on the CPU (the
    memory plan has checked the CPU can run it: modelserver/plan.py)."""
    if threads:
        torch.set_num_threads(threads)
    if device in ("auto", "cuda") and _cuda_works():
        dtype = cuda_dtype or (torch.float16 if fp16 else torch.float32)
        name = torch.cuda.get_device_name(0)
        return (
            torch.device("cuda"),
            dtype,
            Placement("torch", "cuda", name, str(dtype).removeprefix("torch.")),
        )
    if device == "cuda":
        raise DeviceUnavailableError("--device cuda: torch cannot run CUDA kernels on this machine")
    name = str(cpu_dtype).removeprefix("torch.")
    return torch.device("cpu"), cpu_dtype, Placement("torch", "cpu", "cpu", name)
