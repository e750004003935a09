"""The server's own memory, reported in ModelMetadata parameters so that a client (the offline
comparison) can read what a model costs without access to the host (docs/protocol.md)."""

from __future__ import annotations

import os
import resource
import sys

import psutil


def memory_parameters(device: str) -> dict[str, int]:
    """`memory_rss_bytes` now, `memory_peak_rss_bytes` since the process started, and on a GPU
    `gpu_memory_bytes`: what NVML says this process holds (allocators keep what they reserved,
    so it is also the peak in practice)."""
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = psutil.Process().memory_info().rss
    peak = peak if sys.platform == "darwin" else peak * 1024
    # The two are counted a little differently; a peak below the current value would confuse.
    values = {"memory_rss_bytes": rss, "memory_peak_rss_bytes": max(peak, rss)}
    if device.startswith("cuda"):
        gpu = _gpu_bytes()
        if gpu is not None:
            values["gpu_memory_bytes"] = gpu
    return values


def _gpu_bytes() -> int | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        pid = os.getpid()
        total = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
        return total
    except pynvml.NVMLError:
        return None
