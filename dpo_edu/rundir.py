"""The run folder of `dpo-edu run` and `dpo-edu frontier`: nothing a user made is ever lost.

A run writes a marker file, `.dpo-edu-run.json`, before anything else. It records
what made the folder (`run` or `frontier`), the profile and the options, so that

* `--overwrite` replaces only a folder that is recognisably a dpo-edu run: one
  whose every entry is something a run writes. It refuses `/`, the home
  directory, the working directory and any folder that contains it, whatever
  is inside them. The old run is moved aside (`NAME.old`) and deleted only once
  the new run has written its first result; a run that fails before that puts
  the old one back.
* `--resume` continues with the profile and options the run was started with,
  and only in a folder that has the marker: any other folder is not a run.

While a run writes its folder it holds an exclusive `flock` on
`.dpo-edu-run.lock` inside it, with its pid and command line written in the
file: a second run on the same folder (an `--overwrite`, a `--resume`) fails
in one line naming them. The kernel drops the lock when the process ends, a
crash and `kill -9` included, so a stale lock file never blocks anyone.

Every check here runs before the model is loaded: a folder that cannot be
written, that may not be replaced, or that another run is writing, fails in
one line before minutes of work.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so run folders are not locked there
    fcntl = None

MARKER = ".dpo-edu-run.json"
LOCK = ".dpo-edu-run.lock"  # held (flock) by the process writing the folder; holds its pid and command line
# what `dpo-edu run` and `dpo-edu frontier` write (fnmatch patterns); a folder holding anything else is not replaced
RUN_OUTPUTS = (
    MARKER,
    LOCK,
    "samples.json",
    "pairs.jsonl",
    "heldout_pairs.jsonl",
    "pairs_counts.json",
    "metrics.jsonl",
    "checkpoints",
    "policy",
    "plots",
    "summary.json",
    "report.md",
    "frontier.jsonl",
    "frontier.png",
    "frontier.md",
    "pairs_seed*.jsonl",
)
RUN_ENTRIES = (
    *RUN_OUTPUTS,
    *(
        f".{name}.*" for name in RUN_OUTPUTS
    ),  # one being written (`utils.staged`: .NAME.RANDOM.tmp, a folder .NAME.RANDOM)
    "pairs.jsonl.tmp",
    "policy.tmp",
    "pairs_seed*.jsonl.tmp",  # the same, as dpo-edu wrote them before `staged`
)


class RunFolderError(ValueError):
    """An --out folder that cannot be used as asked; the message says why and what to do."""


class RunFolderBusy(RunFolderError):
    """Another process holds the folder's lock: it is writing that run right now."""


def flag(name: str) -> str:
    """The command-line flag of an option: heldout_fraction -> --heldout-fraction."""
    return "--" + name.replace("_", "-")


def _given(value) -> bool:
    """Whether an option was given: None is 'not given', and so is False (a store_true flag left off)."""
    return value is not None and value is not False


def _started_with(name: str, value) -> str:
    if not _given(value):
        return f"without {flag(name)}"
    if isinstance(value, (list, tuple)):  # --methods, --betas: as they are typed
        value = ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return f"with {flag(name)}" if value is True else f"with {flag(name)} {value}"


def _entries(folder: Path) -> list[Path]:
    """What `folder` holds, its lock file aside (the run checking the folder may have just made it)."""
    return [entry for entry in folder.iterdir() if entry.name != LOCK]


def foreign_entries(folder: Path) -> list[str]:
    """The names in `folder` that no dpo-edu run writes (sorted)."""
    return sorted(
        entry.name for entry in folder.iterdir() if not any(fnmatch.fnmatch(entry.name, p) for p in RUN_ENTRIES)
    )


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
    """One run's --out folder; `check` it before any work, `start` it, then `keep` or `abandon` what it replaced,
    and `release` it at the end (or use it as a context manager: `with RunFolder.check(...) as folder:`)."""

    path: Path
    kind: str  # "run" or "frontier"
    overwrite: bool = False
    replaced: Path | None = None  # the old run, moved aside until the new one has its first result
    made: list[Path] = field(default_factory=list)
    locks: list[int] = field(default_factory=list)  # file descriptors holding flocks: the folder's, then the old run's

    @classmethod
    def check(cls, out: str | Path, kind: str, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
        """Everything that can be known before the model loads; raises RunFolderError (or FileExistsError) if unusable.

        An existing folder is locked here (`RunFolderBusy` if another run holds it), and stays locked until `release`.
        """
        folder = cls(Path(out), kind, overwrite=overwrite)
        path = folder.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path} is a file, not a folder; choose another --out")
        if resume:
            folder._check_resumable()
        elif path.exists() and _entries(path):
            if not overwrite:
                raise FileExistsError(
                    f"{path} already exists and is not empty; choose another --out, "
                    f"or pass --overwrite to replace it (only a dpo-edu run folder is ever replaced)"
                )
            folder._check_replaceable()
        check_writable(path)
        if path.is_dir():
            folder._lock()
            if resume:
                folder._check_unfinished()  # again, under the lock: another run may have finished it meanwhile
        return folder

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _lock(self) -> None:
        """Hold an exclusive flock on path/LOCK, and write this process's pid and command line into it."""
        if fcntl is None:
            return
        lock = self.path / LOCK
        while True:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(descriptor, 1000).decode("utf-8", "replace").strip() or "a run that is just starting"
                os.close(descriptor)
                raise RunFolderBusy(
                    f"{self.path} is being written by another dpo-edu run ({holder}); wait for it to "
                    f"finish or stop it, or choose another --out"
                ) from None
            except OSError:  # a file system without flock (some network mounts): the folder goes unlocked
                os.close(descriptor)
                return
            if _same_file(descriptor, lock):
                break
            os.close(descriptor)  # the holder removed the file as it let go: lock the one at the path now
        os.ftruncate(descriptor, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        os.write(descriptor, f"pid {os.getpid()}: {command}".encode())
        self.locks.insert(0, descriptor)

    def release(self) -> None:
        """Let go of the folder's lock (removing the lock file); the kernel does the same when the process dies."""
        for descriptor in self.locks:
            lock = self.path / LOCK
            if _same_file(descriptor, lock):
                lock.unlink()
            os.close(descriptor)
        self.locks = []

    def _check_replaceable(self) -> None:
        reason = protected_reason(self.path)
        if reason:
            raise RunFolderError(
                f"--overwrite refuses {self.path}: {reason}; give --out a folder of its own, e.g. runs/dpo"
            )
        foreign = foreign_entries(self.path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise RunFolderError(
                f"--overwrite refuses {self.path}: it holds {shown}, which no dpo-edu run writes; "
                f"move those out, or choose another --out"
            )

    def _check_resumable(self) -> None:
        path = self.path
        if not path.is_dir():
            raise RunFolderError(
                f"{path} does not exist: there is nothing to resume; "
                f"start a new run with --out {path} (without --resume)"
            )
        if not (path / MARKER).is_file():
            raise RunFolderError(
                f"{path} is not a dpo-edu run folder (no {MARKER}, which every run writes first), "
                f"so there is nothing to resume and nothing in it is touched; start a new run with "
                f"another --out"
            )
        recorded = self.options()
        if recorded.get("kind") != self.kind:
            raise RunFolderError(
                f"{path} was made by dpo-edu {recorded.get('kind')}, not dpo-edu {self.kind}; "
                "resume it with that command"
            )
        self._check_unfinished()

    def _check_unfinished(self) -> None:
        if (self.path / "summary.json").exists():
            raise FileExistsError(f"{self.path} holds a finished run (summary.json); nothing to resume")

    def options(self) -> dict:
        """What the marker recorded (kind, profile, options, inputs); {} when there is no marker."""
        marker = self.path / MARKER
        if not marker.is_file():
            return {}
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(
                f"{marker}: not valid JSON ({error}); it records the run's options, so the run cannot be resumed"
            ) from None
        if not isinstance(recorded, dict):
            raise RunFolderError(
                f"{marker}: not a JSON object; it records the run's options, so the run cannot be resumed"
            )
        return recorded

    def resume_options(self, profile, model, **flags) -> tuple:
        """(profile, model, *flags) as the run was started (its marker), so `--resume` needs none of them.

        `profile` is a name, a Profile or None; a flag given here (anything but
        None, or False for an on/off flag) that differs from the recorded value
        is refused in one line naming the flag as typed and the recorded value.
        `loss` is a dict of settings, each checked as its own flag (--max-length, ...).
        """
        recorded = self.options()
        asked = getattr(profile, "name", profile)
        if asked is not None and asked != recorded["profile"]:
            raise RunFolderError(
                f"{self.path} is a {recorded['profile']}-profile {self.kind}; resume it without --profile"
            )
        if model is not None and str(model) != recorded.get("model"):
            raise RunFolderError(
                f"{self.path} was started with --model {recorded.get('model') or '(the default)'}; "
                "resume it without --model"
            )
        for name, value in flags.items():
            # `loss` holds several settings, each its own flag
            given, started = ((value or {}), recorded.get(name) or {}) if name == "loss" else ({name: value}, recorded)
            for setting, setting_value in given.items():
                if _given(setting_value) and setting_value != started.get(setting):
                    raise RunFolderError(
                        f"{self.path} was started {_started_with(setting, started.get(setting))}; "
                        f"resume it without {flag(setting)}"
                    )
        return (
            profile if asked is not None else recorded["profile"],
            recorded.get("model"),
            *(recorded.get(name, value) for name, value in flags.items()),
        )

    def record(self, **fields) -> None:
        """Update fields of the marker (e.g. a resumed run's inputs)."""
        marker = {**self.options(), **fields}
        (self.path / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")

    def start(self, **options) -> Path:
        """Lock the folder (making it if needed), move an old run aside (with --overwrite), write the marker first."""
        path = self.path
        if not self.locks:  # the folder did not exist at `check`
            try:
                path.mkdir(parents=True)
                created = True
            except FileExistsError:  # made meanwhile (by another run, whose lock then stops us)
                created = False
            self._lock()
            if created:
                self.made.append(path)
        if _entries(path):
            if not self.overwrite:
                raise FileExistsError(f"{path} is no longer empty; choose another --out, or pass --overwrite")
            self._check_replaceable()  # again: the folder may have changed while the model loaded
            self.replaced = _free_name(path.with_name(path.name + ".old"))
            path.rename(self.replaced)  # its lock file goes with it, still held: the old run stays ours
            path.mkdir()
            self._lock()
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
            self._unlock(-1)  # the old run's lock, whose file went with it
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
            self._unlock(0)  # the new folder's lock, whose file is gone; the old run's is the folder's again

    def _unlock(self, index: int) -> None:
        if len(self.locks) > 1:  # none without fcntl
            os.close(self.locks.pop(index))


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether `path` is still the file open as `descriptor` (it may have been removed, or replaced, since)."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


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
        return (
            f"stopped; the checkpoint {pointer.read_text(encoding='utf-8').strip()} is in {out / 'checkpoints'}: "
            f"continue with `dpo-edu {command} --out {out} --resume`"
        )
    if any((out / name).is_file() for name in ("samples.json", "pairs.jsonl")) or any(out.glob("pairs_seed*.jsonl")):
        return (
            f"stopped; what was finished is in {out}: `dpo-edu {command} --out {out} --resume` "
            f"continues from it without redoing it"
        )
    if out.exists():
        return f"stopped before any result was written; {out} holds nothing to resume"
    return "stopped before any result was written; nothing was kept, so start again with the same command"
