"""Checkpoints of a DPO run: written atomically, read without unpickling anything.

A checkpoint is a folder `<checkpoint_dir>/step-000123/` holding
    model.safetensors      the policy's weights (safetensors: tensors only, no code)
    tensors.safetensors    the reference log-probs and the shuffle generator's state at the epoch's start
    optimizer.pt           AdamW's state, read back with torch.load(weights_only=True)
    trainer_state.json     step, epoch, batches done, the scheduler's state, the metrics so far, the TrainConfig,
                           and the LoRA adapters' settings for a peft model (None for a plain one)
It is written into a hidden temporary folder and renamed into place
(`dpo_edu.utils.staged`), then the file `latest` is replaced (also by a
rename) to point at it; only then are older checkpoints removed. A crash at
any moment leaves the previous checkpoint whole.

`save` writes one from the trainer's parts and its `TrainerState` (the metrics
so far and the position in the data); `resume` puts them back.

Why not `accelerator.save_state`: it pickles the Python RNG states and loads
the optimizer with a plain `torch.load`, and the course promises never to
unpickle a file; the training loop's only randomness is the shuffle generator,
whose state is a tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from .utils import staged

LATEST = "latest"
FORMAT = 1
CHECKPOINT_FILES = ("model.safetensors", "tensors.safetensors", "optimizer.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the way on."""


@dataclasses.dataclass
class TrainerState:
    """Where training stands: the metrics of every step so far, and the position in the data.

    The position is the epoch, how many of its micro-batches are done, and the
    shuffle generator's state at the epoch's start (it fixes the epoch's order:
    a resumed epoch replays it and skips the micro-batches done).
    """

    history: list[dict[str, float]]
    epoch_generator_state: torch.Tensor
    epoch: int = 0
    batches_done_in_epoch: int = 0


@dataclasses.dataclass
class Checkpoint:
    folder: Path
    state: dict[str, Any]
    optimizer: dict[str, Any]
    reference: tuple[torch.Tensor, torch.Tensor]  # (N,) chosen, (N,) rejected; both empty for a reference-free loss
    epoch_generator_state: torch.Tensor

    def reference_logps(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference log-probs the run trained with; None for a reference-free loss (SimPO, ORPO)."""
        return self.reference if self.reference[0].numel() else None


def save(
    checkpoint_dir: str | Path,
    model,
    optimizer,
    scheduler,
    *,
    config,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    state: TrainerState,
) -> Path:
    """Write a checkpoint atomically; return its folder. Older checkpoints are removed once it is in place.

    `reference` is None for a reference-free loss (stored as two empty tensors).
    """
    from safetensors.torch import save_file, save_model

    checkpoint_dir = Path(checkpoint_dir)
    reference = reference if reference is not None else (torch.zeros(0), torch.zeros(0))
    step = len(state.history)
    final = checkpoint_dir / f"step-{step:06d}"
    with staged(final, folder=True) as staging:
        save_model(model, str(staging / "model.safetensors"))  # handles tied weights (embedding = output layer)
        save_file(
            {
                "reference_chosen": reference[0].contiguous(),
                "reference_rejected": reference[1].contiguous(),
                "epoch_generator_state": state.epoch_generator_state.contiguous(),
            },
            str(staging / "tensors.safetensors"),
        )
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        sizes = {name: (staging / name).stat().st_size for name in CHECKPOINT_FILES}  # `verify` compares them on resume
        payload = {
            "format": FORMAT,
            "step": step,
            "config": dataclasses.asdict(config),
            "file_sizes": sizes,
            "adapters": adapter_settings(model),
            "epoch": state.epoch,
            "batches_done_in_epoch": state.batches_done_in_epoch,
            "history": state.history,
            "scheduler": scheduler.state_dict(),
        }
        (staging / "trainer_state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        if final.exists():  # the same step saved twice (an interrupt on the last step): keep the new one
            shutil.rmtree(final)
    with staged(checkpoint_dir / LATEST) as pointer:
        pointer.write_text(final.name + "\n", encoding="utf-8")
    for old in checkpoint_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resume(
    checkpoint: Checkpoint, model, optimizer, scheduler, *, metrics_path: str | Path | None = None
) -> TrainerState:
    """Put the model's weights, the optimizer and the scheduler back as they were at `checkpoint`; return its TrainerState.

    `model` is the unwrapped model (`accelerator.unwrap_model`). metrics.jsonl,
    when given, is cut back to the checkpoint's steps: the steps after it are trained, and written, again.
    """
    _restore_model(model, checkpoint)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    history = checkpoint.state["history"]
    if metrics_path:
        _truncate_metrics(metrics_path, len(history))
    return TrainerState(
        history,
        checkpoint.epoch_generator_state,
        epoch=checkpoint.state["epoch"],
        batches_done_in_epoch=checkpoint.state["batches_done_in_epoch"],
    )


def latest_folder(checkpoint_dir: str | Path) -> Path | None:
    """The folder `latest` points at, or None when there is no checkpoint."""
    pointer = Path(checkpoint_dir) / LATEST
    if not pointer.is_file():
        return None
    return pointer.parent / pointer.read_text(encoding="utf-8").strip()


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged ({why}): this checkpoint cannot be resumed. Delete {path.parent.parent} and resume again: "
        f"training restarts from step 0 (dpo-edu run --resume keeps the run's saved pairs)"
    )


def verify(folder: str | Path) -> dict[str, Any]:
    """Check a checkpoint's files without loading them (seconds, not minutes); return its trainer state.

    Catches a missing or truncated file: every file must have the size written
    in trainer_state.json, the safetensors headers must parse and optimizer.pt
    must be a whole zip archive. Raises CheckpointError naming the file.
    """
    import zipfile

    from safetensors import safe_open

    folder = Path(folder)
    state_path = folder / "trainer_state.json"
    if not state_path.is_file():
        raise _damaged(state_path, "missing")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _damaged(state_path, f"not valid JSON: {error}") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}, field 'format': {state.get('format')!r}, this version reads {FORMAT}")
    for name in CHECKPOINT_FILES:
        path = folder / name
        if not path.is_file():
            raise _damaged(path, "missing")
        expected = state.get("file_sizes", {}).get(name)
        if expected is not None and path.stat().st_size != expected:
            raise _damaged(path, f"{path.stat().st_size:,} bytes, {expected:,} when it was saved")
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt"):
                    pass
            elif not zipfile.is_zipfile(path):
                raise ValueError("not a whole zip archive")
        except Exception as error:  # safetensors raises its own error types
            raise _damaged(path, str(error).splitlines()[0][:120]) from None
    return state


def load_latest(checkpoint_dir: str | Path, config) -> Checkpoint:
    """Read the checkpoint `latest` points at; the TrainConfig must be the one it was trained with."""
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    folder = latest_folder(checkpoint_dir)
    if folder is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint to resume from (no '{LATEST}' file)")
    state = verify(folder)
    state_path = folder / "trainer_state.json"
    wanted = dataclasses.asdict(config)
    saved = state["config"]
    if saved.get("mixed_precision") == "no":  # checkpoints before dpo_edu.precision named float32 as accelerate does
        saved = {**saved, "mixed_precision": "fp32"}
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in wanted.items() if saved.get(key) != value]
    if changed:
        raise ValueError(
            f"{state_path}: the run was trained with another TrainConfig; resume needs the same one "
            f"(changed: {'; '.join(changed)})"
        )
    optimizer = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    tensors = load_file(str(folder / "tensors.safetensors"))
    reference = (tensors["reference_chosen"], tensors["reference_rejected"])
    return Checkpoint(folder, state, optimizer, reference, tensors["epoch_generator_state"])


def adapter_settings(model) -> dict[str, dict[str, Any]] | None:
    """A peft model's adapters (dpo_edu.lora): {name: {type, r, alpha, target_modules}}; None for a plain model.

    A LoRA checkpoint holds the base weights and the adapters (the whole
    PeftModel), so resuming needs the model wrapped the same way.
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    settings = {}
    for name, config in configs.items():
        targets = getattr(config, "target_modules", None)
        settings[name] = {
            "type": str(getattr(config.peft_type, "value", config.peft_type)),
            "r": getattr(config, "r", None),
            "alpha": getattr(config, "lora_alpha", None),
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        }
    return settings


def _describe(settings: dict | None) -> str:
    if settings is None:
        return "no adapters (full fine-tuning)"
    return "adapters " + "; ".join(f"{name}: {value}" for name, value in settings.items())


def _restore_model(model, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's weights into `model` (same architecture, same LoRA adapters if any), in place."""
    from safetensors.torch import load_model

    if "adapters" in checkpoint.state:  # checkpoints from before LoRA do not say; a mismatch then fails in load_model
        saved, given = checkpoint.state["adapters"], adapter_settings(model)
        if saved != given:
            raise CheckpointError(
                f"{checkpoint.folder / 'trainer_state.json'}: the run was trained with {_describe(saved)}, but the model given "
                f"to resume has {_describe(given)}; resume needs the model set up as it was "
                + (
                    "(dpo_edu.lora.add_lora with the same r, alpha and target_modules)"
                    if saved
                    else "(the plain model, no add_lora)"
                )
            )
    load_model(model, str(checkpoint.folder / "model.safetensors"), device=str(next(model.parameters()).device))


def _truncate_metrics(path: str | Path, steps: int) -> None:
    """Keep the first `steps` lines of metrics.jsonl: lines written after the checkpoint are written again on resume."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    with staged(path) as staging:
        staging.write_text("".join(lines[:steps]), encoding="utf-8")


@contextlib.contextmanager
def interrupt_flag():
    """While inside, the first Ctrl-C (SIGINT) only sets a flag, so training can finish its step and save.

    Yields a function returning whether SIGINT arrived. A second Ctrl-C
    interrupts at once, as usual. Outside the main thread (where handlers
    cannot be installed), or where SIGINT is ignored (a background job), the
    flag is never set and nothing changes.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield received.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if received.is_set():
            raise KeyboardInterrupt
        received.set()
        # the caller says what it keeps (a checkpoint, finished runs) when it stops
        print("\nCtrl-C: finishing this step, then stopping (press again to stop at once)", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
