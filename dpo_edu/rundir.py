"""The run folder of `dpo-edu run` and `dpo-edu frontier`: nothing a user made is ever lost.

A run writes a marker file, `.dpo-edu-run.json`, before anything else. It records
what made the folder (`run` or `frontier`), the profile and the options, so that

* `--overwrite` replaces only a folder that is recognisably a dpo-edu run: one
  whose every entry is something a run writes. It refuses `/`, the home
  directory, the working directory and any folder that contains it, whatever
  is inside them. The old run is moved aside (`NAME.old`) and deleted only once
  the new run has written its first result; a run that fails before that puts
  the old one back.
* `--resume` continues with the profile and options the run was started with.

Every check here runs before the model is loaded: a folder that cannot be
written, or that may not be replaced, fails in one line before minutes of work.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MARKER = ".dpo-edu-run.json"
# what `dpo-edu run` and `dpo-edu frontier` write (fnmatch patterns); a folder holding anything else is not replaced
RUN_OUTPUTS = (
    MARKER, "pairs.jsonl", "pairs_counts.json", "metrics.jsonl", "checkpoints", "policy", "plots", "summary.json", "report.md",
    "frontier.jsonl", "frontier.png", "frontier.md", "pairs_seed*.jsonl",
)
RUN_ENTRIES = (
    *RUN_OUTPUTS,
    *(f".{name}.*" for name in RUN_OUTPUTS),  # one being written (`utils.staged`: .NAME.RANDOM.tmp, a folder .NAME.RANDOM)
    "pairs.jsonl.tmp", "policy.tmp", "pairs_seed*.jsonl.tmp",  # the same, as dpo-edu wrote them before `staged`
)


class RunFolderError(ValueError):
    """An --out folder that cannot be used as asked; the message says why and what to do."""


def foreign_entries(folder: Path) -> list[str]:
    """The names in `folder` that no dpo-edu run writes (sorted)."""
    return sorted(entry.name for entry in folder.iterdir() if not any(fnmatch.fnmatch(entry.name, p) for p in RUN_ENTRIES))


def protected_reason(path: Path) -> str | None:
    """Why `path` may never be replaced (`/`, home, the working directory or a folder above it), else None."""
    path, cwd = path.resolve(), Path.cwd().resolve()
    if path == Path(path.anchor):
        return "it is the file system's root"
    if path == Path.home().resolve():
        return "it is your home directory"
    if path == cwd:
        return "it is the current directory"
    if cwd.is_relative_to(path):
        return "it contains the current directory"
    return None


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: Path) -> None:
    """Raise RunFolderError unless a file can be created in `path` (or, if it does not exist yet, where it would be made)."""
    where = _nearest_existing(path)
    if not where.is_dir():
        raise RunFolderError(f"{path}: {where} is a file, not a folder; choose another --out")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dpo-edu-probe-", dir=where)
    except OSError as error:
        raise RunFolderError(f"{path}: cannot write in {where} ({error.strerror}); choose another --out") from None
    os.close(handle)
    os.unlink(probe)


@dataclass
class RunFolder:
    """One run's --out folder; `check` it before any work, `start` it, then `keep` or `abandon` what it replaced."""

    path: Path
    kind: str  # "run" or "frontier"
    overwrite: bool = False
    replaced: Path | None = None  # the old run, moved aside until the new one has its first result
    made: list[Path] = field(default_factory=list)

    @classmethod
    def check(cls, out: str | Path, kind: str, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
        """Everything that can be known before the model loads; raises RunFolderError (or FileExistsError) if unusable."""
        folder = cls(Path(out), kind, overwrite=overwrite)
        path = folder.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path} is a file, not a folder; choose another --out")
        if resume:
            folder._check_resumable()
        elif path.exists() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{path} already exists and is not empty; choose another --out, "
                                      f"or pass --overwrite to replace it (only a dpo-edu run folder is ever replaced)")
            folder._check_replaceable()
        check_writable(path)
        return folder

    def _check_replaceable(self) -> None:
        reason = protected_reason(self.path)
        if reason:
            raise RunFolderError(f"--overwrite refuses {self.path}: {reason}; give --out a folder of its own, e.g. runs/dpo")
        foreign = foreign_entries(self.path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise RunFolderError(f"--overwrite refuses {self.path}: it holds {shown}, which no dpo-edu run writes; "
                                 f"move those out, or choose another --out")

    def _check_resumable(self) -> None:
        path = self.path
        if not path.is_dir():
            raise RunFolderError(f"{path} does not exist: there is nothing to resume; "
                                 f"start a new run with --out {path} (without --resume)")
        recorded = self.options()
        if recorded and recorded.get("kind") != self.kind:
            raise RunFolderError(f"{path} was made by dpo-edu {recorded.get('kind')}, not dpo-edu {self.kind}; "
                                 "resume it with that command")
        if (path / "summary.json").exists():
            raise FileExistsError(f"{path} holds a finished run (summary.json); nothing to resume")

    def options(self) -> dict:
        """What the marker recorded (kind, profile, options); {} for a folder from before markers existed."""
        marker = self.path / MARKER
        if not marker.is_file():
            return {}
        try:
            return json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{marker}: not valid JSON ({error}); it records the run's options, "
                                 "so the run cannot be resumed") from None

    def resume_options(self, profile, model, **flags) -> tuple:
        """(profile, model, *flags) as the run was started (its marker), so `--resume` needs none of them.

        `profile` is a name, a Profile or None; a value given here that differs
        from the recorded one is an error. A folder from before markers returns
        what it is given (the checkpoint's TrainConfig is still checked on resume).
        """
        recorded = self.options()
        if not recorded:
            return (profile, model, *flags.values())
        asked = getattr(profile, "name", profile)
        if asked is not None and asked != recorded["profile"]:
            raise RunFolderError(f"{self.path} is a {recorded['profile']}-profile {self.kind}; resume it without --profile")
        if model is not None and str(model) != recorded.get("model"):
            raise RunFolderError(f"{self.path} was started with --model {recorded.get('model') or '(the default)'}; "
                                 "resume it without --model")
        for name, value in flags.items():
            if value and value != recorded.get(name):
                started = f"with --{name} {recorded[name]}" if isinstance(recorded.get(name), str) else f"without --{name}"
                raise RunFolderError(f"{self.path} was started {started}; resume it without --{name}")
        return (profile if asked is not None else recorded["profile"], recorded.get("model"),
                *(recorded.get(name, value) for name, value in flags.items()))

    def start(self, **options) -> Path:
        """Move an old run aside (with --overwrite), create the folder and write the marker first."""
        path = self.path
        if path.exists() and any(path.iterdir()):
            if not self.overwrite:
                raise FileExistsError(f"{path} is no longer empty; choose another --out, or pass --overwrite")
            self._check_replaceable()  # again: the folder may have changed while the model loaded
            self.replaced = _free_name(path.with_name(path.name + ".old"))
            path.rename(self.replaced)
        if not path.exists():
            path.mkdir(parents=True)
            self.made.append(path)
        created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = {"kind": self.kind, "format": 1, "created": created, **options}
        (path / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        self.made.append(path / MARKER)
        return path

    def keep(self) -> None:
        """The new run has its first result on disk: the run it replaced can go."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced)
            self.replaced = None
        self.made = []

    def abandon(self) -> None:
        """The new run failed before its first result: remove what it made and put the replaced run back."""
        for made in reversed(self.made):
            if made.is_dir():
                if not foreign_entries(made):
                    shutil.rmtree(made)
            else:
                made.unlink(missing_ok=True)
        self.made = []
        if self.replaced is not None and not self.path.exists():
            self.replaced.rename(self.path)
            self.replaced = None


def _free_name(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def stopped_message(out: str | Path, command: str) -> str:
    """What an interrupted run left on disk, and the way on: --resume, or nothing to do."""
    out = Path(out)
    pointer = out / "checkpoints" / "latest"
    if pointer.is_file():
        return (f"stopped; the checkpoint {pointer.read_text(encoding='utf-8').strip()} is in {out / 'checkpoints'}: "
                f"continue with `dpo-edu {command} --out {out} --resume`")
    if (out / "pairs.jsonl").is_file() or any(out.glob("pairs_seed*.jsonl")):  # each command's first result
        return (f"stopped; what was finished is in {out}: `dpo-edu {command} --out {out} --resume` "
                f"continues from it without redoing it")
    if out.exists():
        return f"stopped before any result was written; {out} holds nothing to resume"
    return "stopped before any result was written; nothing was kept, so start again with the same command"
