"""A stand-in for NVML (nvidia-ml-py's `pynvml`) with one 80 GB GPU, 60 GB used and 40 %
busy: so that a test sees every GPU series a process emits on a machine without a GPU."""

from __future__ import annotations

from types import SimpleNamespace

TOTAL = 80 * 1024**3
USED = 60 * 1024**3


def nvmlInit() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=40, memory=20)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    return SimpleNamespace(total=TOTAL, used=USED, free=TOTAL - USED)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return []


class NVMLError(Exception):
    pass
