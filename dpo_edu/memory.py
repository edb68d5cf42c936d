"""Peak memory of a piece of work, on CUDA or on a Linux CPU.

CUDA: torch's allocator statistics. CPU: the process's peak resident set size
(VmHWM in /proc/self/status), which Linux lets a process reset by writing 5 to
/proc/self/clear_refs. For the peak to follow tensors, freed memory must go
back to the system: glibc does that for blocks above its mmap threshold, but it
raises that threshold as the program runs (up to 32 MB), after which freed
blocks below it stay in a heap that the next allocation reuses unseen. So
`peak_memory` pins the threshold at 64 KiB (glibc's mallopt) and returns the
heaps' free pages to the system (malloc_trim) before measuring; the threshold
stays in force for the process, at a small cost in allocation speed. A fresh
process (`compare_logprobs_memory`) is still the cleanest measurement.
Elsewhere (macOS, Windows, MPS) the CPU number is not available and
`peak_memory` raises.
"""

from __future__ import annotations

import ctypes
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


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def cpu_peak_supported() -> bool:
    return _STATUS.exists() and _CLEAR_REFS.exists()


def _prepare_glibc(size: int = 64 * 1024) -> bool:
    """Make glibc mmap (and so return when freed) every block above `size`, and hand
    back the free memory its heaps already hold (malloc_trim), so that reusing it
    counts as new resident memory again. False if this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, size)) and bool(libc.malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


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
    gc.collect()
    _prepare_glibc()
    _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident size
    before = _status_bytes("VmRSS")
    result = work()
    return result, _status_bytes("VmHWM") - before


# ------------------------------------------- sequence log-probs: plain vs lean


def logprobs_extra_memory(
    variant: str, mode: str, batch: int, steps: int, vocab: int, device: str = "cpu", chunk_rows: int | None = None
) -> dict[str, float]:
    """Extra peak bytes (beyond the logits) of one sequence-log-prob call on random (batch, steps, vocab) logits.

    variant: "plain" (log_softmax + gather) or "lean" (`sequence_logprobs`);
    mode: "no_grad" (reference / evaluation passes) or "backward" (forward + backward).
    Runs the call once unmeasured first (threads and kernels start once per process).
    Returns {"extra_bytes", "logits_bytes", "seconds"}.
    """
    import time

    from .logprobs import sequence_logprobs, sequence_logprobs_plain

    if variant not in ("plain", "lean") or mode not in ("no_grad", "backward"):
        raise ValueError(f"variant must be plain or lean and mode no_grad or backward, got {variant!r}, {mode!r}")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, steps, vocab, generator=generator).to(device).requires_grad_(mode == "backward")
    labels = torch.randint(vocab, (batch, steps), generator=generator).to(device)
    labels[:, : steps // 4] = -100  # a prompt

    def function(x: torch.Tensor) -> torch.Tensor:
        if variant == "plain":
            return sequence_logprobs_plain(x, labels)
        return sequence_logprobs(x, labels, chunk_rows=chunk_rows)

    def work() -> float:
        start = time.perf_counter()
        if mode == "no_grad":
            with torch.no_grad():
                function(logits)
        else:
            function(logits).sum().backward()
        return time.perf_counter() - start

    work()
    logits.grad = None  # the measured backward allocates its own gradient
    seconds, extra = peak_memory(work, device)
    return {
        "extra_bytes": float(extra),
        "logits_bytes": float(logits.numel() * logits.element_size()),
        "seconds": seconds,
    }


def compare_logprobs_memory(
    batch: int, steps: int, vocab: int, device: str = "cpu", chunk_rows: int | None = None
) -> dict[tuple[str, str], dict[str, float]]:
    """`logprobs_extra_memory` for plain and lean, no_grad and backward, each in a fresh Python process.

    A fresh process per number keeps memory that earlier work freed (and the C
    allocator kept) from hiding part of a peak; MALLOC_MMAP_THRESHOLD_ pins
    glibc's threshold from the start. Returns {(variant, mode): result}.
    """
    import json
    import os
    import subprocess
    import sys

    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    results = {}
    for mode in ("no_grad", "backward"):
        for variant in ("plain", "lean"):
            arguments = [variant, mode, str(batch), str(steps), str(vocab), str(device), str(chunk_rows or 0)]
            command = [sys.executable, "-m", "dpo_edu.memory", *arguments]
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
            results[variant, mode] = json.loads(output.strip().splitlines()[-1])
    return results


if __name__ == "__main__":  # one measurement, for compare_logprobs_memory's subprocesses
    import json
    import sys

    variant, mode, batch, steps, vocab, device, chunk_rows = sys.argv[1:8]
    print(
        json.dumps(
            logprobs_extra_memory(variant, mode, int(batch), int(steps), int(vocab), device, int(chunk_rows) or None)
        )
    )
