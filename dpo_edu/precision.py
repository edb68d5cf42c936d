"""Precision, in one vocabulary: "auto", "fp32", "bf16", "fp16".

`--precision`, `TrainConfig.mixed_precision` (and the RLOO, SFT and reward-model configs), the sampler's and the
evaluator's `precision=`, and the run's summary all use these names. Weights stay float32 (the master copy); "bf16"
and "fp16" run the matrix products under `torch.autocast`, and callers upcast log-probs and losses to float32.
"auto" picks a 16-bit type only where the hardware multiplies it (`autocast_dtype`).

accelerate calls float32 "no": `accelerate_mixed_precision` is the one translation, used where the Accelerator is
built (`dpo_edu.train`).
"""

from __future__ import annotations

import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_ENV_VAR = "DPO_EDU_CPU_BF16"


def cpu_bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off.

    Elsewhere (e.g. a CPU with AVX2 only) bf16 is emulated and many times slower than fp32.
    $DPO_EDU_CPU_BF16 overrides the probe, to test the precision path this CPU does not take: "1" behaves as a CPU
    with bf16 (so "auto" picks bf16, emulated where the hardware lacks it), "0" as one without; unset or empty: probe.
    """
    setting = os.environ.get(CPU_BF16_ENV_VAR, "")
    if setting:
        if setting not in ("0", "1"):
            raise ValueError(
                f"${CPU_BF16_ENV_VAR} is {setting!r}: set it to 1 (behave as a CPU with bf16), "
                "0 (as one without), or unset it (probe the hardware)"
            )
        return setting == "1"
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The 16-bit type mixed precision uses on `device`, or None for float32 throughout.

    bf16 on GPUs that have it, fp16 on other GPUs (a T4) and on MPS; bf16 on CPUs
    that multiply it in hardware (AVX512-BF16 or AMX); None on other CPUs, where
    bf16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        # without including_emulation=False a T4 reports bf16 "supported" (emulated, slow)
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


def precision_problem(precision, name: str = "precision") -> str | None:
    """What is wrong with `precision` as setting `name`, in one line (accelerate's "no" gets a hint); None if nothing."""
    if isinstance(precision, str) and precision in PRECISIONS:
        return None
    hint = " (accelerate's 'no' is the course's 'fp32')" if precision == "no" else ""
    return f"{name} {precision!r} is not one of: {', '.join(PRECISIONS)}{hint}"


def check_precision(precision: str) -> None:
    """A ValueError in one line unless `precision` is one of PRECISIONS."""
    problem = precision_problem(precision)
    if problem:
        raise ValueError(problem)


def precision_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`: "auto" as `autocast_dtype` picks (float32 on MPS,
    where the course has not measured autocast), "fp32" None, "bf16"/"fp16" that type."""
    check_precision(precision)
    if precision == "auto":
        return None if device.type == "mps" else autocast_dtype(device)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """ "bf16", "fp16" or "fp32" for an autocast dtype (None: float32 throughout)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def resolve(precision: str, device: torch.device) -> str:
    """`precision` with "auto" decided for `device`: "fp32", "bf16" or "fp16"."""
    return precision_name(precision_dtype(device, precision))


def autocast(device: torch.device, precision: str = "auto"):
    """torch.autocast for `precision` on `device` (see `precision_dtype`); a no-op context for float32.

    Weights stay float32 (the master copy); matrix products run in the 16-bit
    type; callers upcast log-probs and losses to float32.
    """
    dtype = precision_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def describe(arithmetic: str) -> str:
    """'bf16 autocast (float32 weights and log-probs)' or 'float32', for logs and reports; `arithmetic` is resolved."""
    return "float32" if arithmetic == "fp32" else f"{arithmetic} autocast (float32 weights and log-probs)"


def accelerate_mixed_precision(precision: str, device: torch.device) -> str:
    """`precision` as accelerate's Accelerator takes it, "auto" decided for `device`: "no", "bf16" or "fp16"."""
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve(precision, device)]
