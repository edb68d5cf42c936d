"""Device choice, seeding, and the small helpers every notebook opens with."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
import secrets
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


DEVICE_NAMES = ("cpu", "cuda", "cuda:N", "mps")


def get_device(prefer: str | None = None) -> torch.device:
    """Pick CUDA, then Apple's MPS, then CPU; `prefer` (or $DPO_EDU_DEVICE) overrides.

    An override that is no device name, or names a device this machine lacks,
    fails here in one ValueError naming the usable ones, not later in a run.
    """
    source = "argument" if prefer else "$DPO_EDU_DEVICE"
    prefer = prefer or os.environ.get("DPO_EDU_DEVICE")
    if prefer:
        return _named_device(prefer, source)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _named_device(name: str, source: str) -> torch.device:
    """`name` as a torch.device if this machine has it; else a ValueError saying which devices it has."""
    where = f"device {name!r} (from {source})"
    try:
        device = torch.device(name.strip().lower())
    except RuntimeError:
        raise ValueError(f"{where} is not a device name; accepted: {', '.join(DEVICE_NAMES)} (usable here: {_usable_devices()})") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}.get(device.type, False)
    if device.type == "cuda" and device.index is not None:
        present = present and device.index < torch.cuda.device_count()
    if not present:
        raise ValueError(f"{where} is not available here; usable: {_usable_devices()}")
    return device


def _usable_devices() -> str:
    """The devices this machine has, e.g. 'cpu, cuda (cuda:0 to cuda:3)'."""
    usable = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        usable.append("cuda (cuda:0" + (f" to cuda:{count - 1})" if count > 1 else ")"))
    if _mps_available():
        usable.append("mps")
    return ", ".join(usable)


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
            raise ValueError(f"${CPU_BF16_ENV_VAR} is {setting!r}: set it to 1 (behave as a CPU with bf16), "
                             "0 (as one without), or unset it (probe the hardware)")
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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def precision_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`: "auto" as `autocast_dtype` picks (float32 on MPS,
    where the course has not measured autocast), "fp32" None, "bf16"/"fp16" that type."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return None if device.type == "mps" else autocast_dtype(device)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """"bf16", "fp16" or "fp32" for an autocast dtype (None: float32 throughout)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(device: torch.device, precision: str = "auto"):
    """torch.autocast for `precision` on `device` (see `precision_dtype`); a no-op context for float32.

    Weights stay float32 (the master copy); matrix products run in the 16-bit
    type; callers upcast log-probs and losses to float32.
    """
    dtype = precision_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """`model` in eval mode inside the block; its own mode (train or eval) again after, also after an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def seed_everything(seed: int = 0, *, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch (all devices); return a torch.Generator seeded the same.

    With `deterministic`, ask torch for deterministic kernels where they exist
    (warn-only, so an op without one still runs).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (to expose reads of
        # uninitialised memory): a guard for kernel writers that cost training 9 % here.
        torch.utils.deterministic.fill_uninitialized_memory = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def device_name(device: torch.device) -> str:
    """A readable name for `device`, e.g. 'cuda (Tesla T4)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {platform.machine()})"
    return device.type


def versions(packages: tuple[str, ...] = ("dpo-edu", "torch", "transformers", "sympy", "numpy", "matplotlib")) -> dict[str, str]:
    """Installed versions of the packages the course depends on (and Python's)."""
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def print_versions() -> None:
    for name, version in versions().items():
        print(f"{name:>12}: {version}")


class Stopwatch:
    """Wall-clock time since creation; notebooks print it in their last cell."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __str__(self) -> str:
        return f"{self.seconds():.1f} s"


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else EOS (SmolLM2 has both; many models have only EOS).

    Padding is on the right and masked (or never looked at by a causal model), so which id it is changes nothing.
    """
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@contextlib.contextmanager
def staged(target: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Write `target` (a file, or with `folder=True` a folder) all at once: yields a hidden temporary path beside
    it, and renames that onto `target` only when the block ends without an error; after an error it is removed.

    A file replaces an existing one (os.replace); a folder must not exist yet (the caller decides what happens
    to an old one). Readers, and a crash at any moment, see the old state or the new one, never half of it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}{'' if folder else '.tmp'}"
    # mkdir/touch, not tempfile's mkdtemp/mkstemp: those make 0700/0600 entries, and a run's files should be readable
    # like any other the user writes (mode 0777/0666 less the umask)
    temporary.mkdir() if folder else temporary.touch(exist_ok=False)
    try:
        yield temporary
        if folder:
            temporary.rename(target)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") inside the block; the user's setting after.

    Loading or saving a 135M model takes seconds, and a notebook cell that does it several times shows a wall of bars.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def sha256_file(path: Path) -> str:
    """The file's SHA-256 as hex, read a MiB at a time (model weights, a run's input files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
