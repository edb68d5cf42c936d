"""Peak memory of a piece of work, on CUDA or on a Linux CPU.

CUDA: torch's allocator statistics. CPU: the process's peak resident set size
(VmHWM in /proc/self/status), which Linux lets a process reset by writing 5 to
/proc/self/clear_refs; large tensors are mmapped and returned to the system
when freed, so the peak follows them. Elsewhere (macOS, Windows, MPS) the CPU
number is not available and `peak_memory` raises.
"""
from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any, Callable

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{key} not found in {_STATUS}")
    return int(match.group(1)) * 1024


def cpu_peak_supported() -> bool:
    return _STATUS.exists() and _CLEAR_REFS.exists()


def peak_memory(work: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """Run `work()` and return (its result, the peak bytes it added above what was in use before).

    The result is kept alive until the peak is read, so it counts (return
    nothing big you do not mean to count).
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = work()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise RuntimeError(f"peak memory is measured on CUDA or a Linux CPU, not on {device.type}")
    if not cpu_peak_supported():
        raise RuntimeError("peak CPU memory needs Linux's /proc/self/status and /proc/self/clear_refs")
    _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident size
    before = _status_bytes("VmRSS")
    result = work()
    return result, _status_bytes("VmHWM") - before
