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
        raise ValueError(
            f"{where} is not a device name; accepted: {', '.join(DEVICE_NAMES)} (usable here: {_usable_devices()})"
        ) from None
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


def versions(
    packages: tuple[str, ...] = ("dpo-edu", "torch", "transformers", "sympy", "numpy", "matplotlib"),
) -> dict[str, str]:
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
