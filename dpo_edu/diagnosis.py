"""Read a DPO training log and say which known symptoms it shows: `dpo-edu diagnose LOG`.

LOG is a dpo-edu `metrics.jsonl` (one JSON object per optimizer step, as `dpo_edu.train.train_dpo` writes it), a
TRL `trainer_state.json` (its `log_history`), or a folder holding either. Both are read into one list of records
in dpo-edu's names (TRL's `learning_rate` becomes `lr`); only records with a `loss` count as steps (TRL's eval
and summary records have `eval_loss` / `train_loss` instead).

The symptoms, each with the step(s) and the numbers, and where the course explains it:

1. the loss stuck at ln 2, with the telltale of its cause (lr 0; grad_norm 0 with log-probs 0; log-probs moving
   while the margin stays 0);
2. the loss collapsing towards 0 with accuracy 1 within a few steps;
3. likelihood displacement: the chosen reward below 0 while the margin grows (common, not by itself a fault);
4. NaN or inf in the loss or grad_norm;
5. the held-out KL (eval/kl, which `dpo-edu run` logs) running away;
6. the held-out DPO loss (eval/loss; TRL's eval_loss) rising while the training loss falls.

The ln 2 check assumes the sigmoid (DPO) loss: IPO, hinge, SimPO and ORPO start elsewhere.

    >>> print(diagnose("docs/full_dpo_run/metrics.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

LN2 = math.log(2)
# |loss - ln 2| below this counts as "at ln 2": a float32 loss at margin 0 is ln 2 to about 1e-7, and a run that
# learns leaves it by more than 1e-3 within a few steps (the course's full run: 0.682 at step 5)
LN2_TOLERANCE = 1e-3
# "stuck": at least this share of the logged steps at ln 2; not all, because a warm-up's first steps sit at ln 2
# in every run (step 1 always: policy = reference; step 2 too when step 1's lr was 0)
STALL_SHARE = 0.8
# "collapsed": a loss below this with every pair of the batch ranked right (-log sigmoid(3) = 0.049: margins of 3
# nats or more), reached by step COLLAPSE_STEPS: a few steps are too few to learn anything but a trivial difference
COLLAPSE_LOSS = 0.05
COLLAPSE_STEPS = 10
# displacement is named when most steps show it (one noisy batch does not), and the margin grows meanwhile
DISPLACEMENT_SHARE = 0.5
# the held-out KL "runs away" when its last value is this many times its first (or KL_FLOOR nats, if the first is
# smaller: a first evaluation right after the start measures a KL near 0)
KL_RUNAWAY_RATIO = 2.0
KL_FLOOR = 0.1
# the held-out DPO loss "rises" when its last value is this far above its lowest while the training loss fell
HELDOUT_RISE = 0.01

TRL_NAMES = {
    "learning_rate": "lr",
    "eval_loss": "eval/loss",
}  # TRL's log name -> dpo-edu's; the rewards/*, logps/* names are the same
SEE = {
    "ln 2": "notebook 09 §1 (the four causes of ln 2, each reproduced); notebook 03 §3 (why step 1 is ln 2)",
    "collapse": "notebook 09 §2 (template pairs against on-policy pairs); notebook 08 §2 (deterministic preferences)",
    "displacement": "notebook 09 §3 (pairs seen and unseen, RPO); notebook 06 §5 (likelihood displacement)",
    "non-finite": "notebook 09 §5 (pure fp16 without loss scaling; a bad row)",
    "kl": "notebook 09 §4 (the learning rate); notebook 06 §6 (held-out reward, win rate and KL)",
    "held-out": "notebook 09 §4 (a held-out DPO loss beside the training loss)",
}


class DiagnoseError(ValueError):
    """A log that cannot be read: one line naming the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One symptom: whether the log shows it, at which steps, the numbers (`detail`) and where the course explains it.

    `fault` is False for a symptom that healthy runs show too (likelihood displacement).
    """

    symptom: str
    found: bool
    detail: str
    steps: tuple[int, ...] = ()
    see: str = ""
    fault: bool = True

    def line(self) -> str:
        head = f"  {'FOUND' if self.found else 'no   '} {self.symptom}: {self.detail}"
        return head + (f"\n        see {self.see}" if self.found and self.see else "")


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` read (`source`: which kind of log, `records`: its steps) and the `findings`, one per symptom."""

    path: str
    source: str
    records: list[dict]
    findings: list[Finding]

    @property
    def found(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.found]

    def summary(self) -> str:
        faults = [finding.symptom for finding in self.found if finding.fault]
        if faults:
            return "symptoms found: " + "; ".join(faults)
        if self.found:
            return "no symptom found apart from likelihood displacement, which healthy runs show too"
        return "no symptom found"

    def __str__(self) -> str:
        steps = [record["step"] for record in self.records]
        count = f"{len(steps)} logged step" + ("s" if len(steps) > 1 else "")
        head = f"{self.path}: {self.source}, {count} ({steps[0]} to {steps[-1]})"
        return "\n".join([head, *(finding.line() for finding in self.findings), self.summary()])


# ------------------------------------------------------------------------------------------------------- reading


def _log_file(path: Path) -> Path:
    """`path`, or the metrics.jsonl / trainer_state.json in the folder `path`."""
    if not path.is_dir():
        return path
    for name in ("metrics.jsonl", "trainer_state.json"):
        if (path / name).is_file():
            return path / name
    raise DiagnoseError(f"{path}: a folder with neither metrics.jsonl nor trainer_state.json in it")


def _parse(path: Path, text: str) -> list | dict:
    """The file's JSON: one document, or a list of the objects of a JSON Lines file."""
    if not text.strip():
        raise DiagnoseError(f"{path}: the file is empty; expected a metrics.jsonl or a trainer_state.json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        try:
            json.loads(lines[0])
        except json.JSONDecodeError:  # not JSON Lines either: the document's own error, with its line
            raise DiagnoseError(f"{path}: not valid JSON at line {whole.lineno} ({whole.msg})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DiagnoseError(
                f"{path}: not valid JSON at line {number} ({error.msg}); "
                f"a run cut short can leave its last line unfinished: delete that line"
            ) from None
        if not isinstance(rows[-1], dict):
            raise DiagnoseError(f"{path}: line {number} is not a JSON object (one per optimizer step)")
    return rows


def _records(path: Path, data: list | dict) -> tuple[str, list[dict]]:
    """(which kind of log, its raw records) from the parsed file."""
    if isinstance(data, dict) and isinstance(data.get("log_history"), list):
        return "TRL trainer_state.json", data["log_history"]
    if isinstance(data, dict) and "loss" in data:
        return "dpo-edu metrics.jsonl", [data]  # a one-step run's metrics.jsonl
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return "dpo-edu metrics.jsonl", data
    what = "a JSON object without 'log_history'" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    raise DiagnoseError(
        f"{path}: {what}: neither a dpo-edu metrics.jsonl (one object per line) nor a TRL trainer_state.json"
    )


def _normalise(records: list[dict]) -> list[dict]:
    """The records with a loss, in dpo-edu's names, each with a `step` (its position when it has none).

    TRL logs an evaluation as a record of its own (eval_loss, no loss): its eval_loss joins the last step record
    logged before it, as "eval/loss" (dpo-edu's hook logs it in the step's own record).
    """
    steps = []
    for position, record in enumerate(records, 1):
        if not isinstance(record, dict):
            continue
        row = {TRL_NAMES.get(key, key): value for key, value in record.items()}
        if not isinstance(record.get("loss"), (int, float)):
            if steps and isinstance(row.get("eval/loss"), (int, float)):
                steps[-1]["eval/loss"] = row["eval/loss"]
            continue
        row.setdefault("step", position)
        steps.append(row)
    return steps


def read_log(path: str | Path) -> tuple[str, list[dict]]:
    """(kind of log, its steps): the records with a loss of a metrics.jsonl or trainer_state.json, in dpo-edu's names.

    Raises DiagnoseError (one line naming the file) for a file that is missing, damaged or neither kind of log.
    """
    file = _log_file(Path(path))
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DiagnoseError(f"{file}: cannot be read as text ({error.strerror or error.__class__.__name__})") from None
    source, records = _records(file, _parse(file, text))
    steps = _normalise(records)
    if not steps:
        raise DiagnoseError(
            f"{file}: no records with a 'loss' among its {len(records)} records; is it a DPO training log?"
        )
    return source, steps


# ------------------------------------------------------------------------------------------------------- symptoms


def _number(record: dict, key: str) -> float | None:
    """record[key] as a float, or None when the record lacks it (or holds null)."""
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _values(records: list[dict], key: str) -> list[float]:
    return [value for record in records if (value := _number(record, key)) is not None]


def _steps(records: list[dict], limit: int = 8) -> str:
    """'1, 2, 3' or '1, 2, ... (40 steps)'."""
    steps = [str(record["step"]) for record in records]
    return ", ".join(steps) if len(steps) <= limit else ", ".join(steps[:limit]) + f", ... ({len(steps)} steps)"


def _after_first_update(records: list[dict]) -> list[dict]:
    """The records after the first one with lr > 0: each measures a policy that has taken a step (step 1 never has)."""
    moved = [index for index, record in enumerate(records) if (_number(record, "lr") or 0) > 0]
    return records[moved[0] + 1 :] if moved else []


def _stall_cause(records: list[dict], stalled: list[dict]) -> str:
    """The telltale among the stalled steps for which of notebook 06's three causes holds."""
    lrs, grads = _values(stalled, "lr"), _values(stalled, "grad_norm")
    logps = _values(stalled, "logps/chosen") + _values(stalled, "logps/rejected")
    stepped = [record for record in _after_first_update(records) if record in stalled]
    if lrs and not any(lrs):
        return (
            "lr is 0 at every one of these steps: a warm-up the run never leaves (warmup_steps at least the "
            "run's steps) or a one-step run"
        )
    if grads and not any(grads) and logps and not any(logps):
        return (
            "grad_norm 0 and logps/chosen, logps/rejected 0: no response token is scored, every label is "
            "masked (a max_length that truncates every response away)"
        )
    if not stepped:
        return "no step after the first update is logged, and the loss is ln 2 until then in every run: train longer"
    margins, chosen = _values(stepped, "rewards/margins"), _values(stepped, "logps/chosen")
    if margins and not any(margins) and any(_values(stepped, "grad_norm")):
        return (
            f"rewards/margins exactly 0 at every step after an update while the log-probs move (logps/chosen "
            f"{min(chosen):.2f} to {max(chosen):.2f}) and grad_norm is not 0: the reference moves with the "
            f"policy (computed by the live model at every step)"
        )
    if len(lrs) > 1 and all(later > earlier for earlier, later in zip(lrs, lrs[1:])):
        return (
            f"lr rises at every one of these steps ({lrs[0]:.2g} to {lrs[-1]:.2g}): the run never leaves its "
            f"warm-up (warmup_steps far above the run's steps), so the policy barely moves"
        )
    return "none of the course's three causes shows (lr, grad_norm and the margins are not 0, lr not warming up)"


def check_ln2(records: list[dict]) -> Finding:
    """Symptom 1: the loss at ln 2 for most steps, and the telltale of its cause."""
    stalled = [record for record in records if abs(record["loss"] - LN2) < LN2_TOLERANCE]
    share = len(stalled) / len(records)
    counted = f"{len(stalled)} of {len(records)} steps within {LN2_TOLERANCE:g} of ln 2 = {LN2:.4f}"
    if share < STALL_SHARE:
        return Finding("loss stuck at ln 2", False, counted + (f" (steps {_steps(stalled)})" if stalled else ""))
    detail = f"{counted} (steps {_steps(stalled)}); {_stall_cause(records, stalled)}"
    return Finding("loss stuck at ln 2", True, detail, tuple(r["step"] for r in stalled), SEE["ln 2"])


def _first_epoch(records: list[dict]) -> list[dict]:
    """The records of the first pass over the pairs (dpo-edu's epoch 0; TRL's epoch <= 1), or all when no epoch is
    logged: there each line measures pairs the policy has not been trained on yet."""
    epochs = [_number(record, "epoch") for record in records]
    if any(epoch is None for epoch in epochs):
        return records
    first = 1.0 if any(isinstance(record["epoch"], float) for record in records) else 0  # TRL: fractions of an epoch
    return [record for record, epoch in zip(records, epochs) if epoch <= first]


def check_collapse(records: list[dict]) -> Finding:
    """Symptom 2: the loss below COLLAPSE_LOSS with accuracy 1 by step COLLAPSE_STEPS, on pairs not yet trained on
    (the first epoch: a loss near 0 on pairs seen before is memorisation, which the held-out loss shows)."""
    early = [record for record in _first_epoch(records) if record["step"] <= COLLAPSE_STEPS]
    collapsed = [
        record
        for record in early
        if record["loss"] < COLLAPSE_LOSS and (_number(record, "rewards/accuracies") or 0) >= 1
    ]
    if not collapsed:
        low = min((record["loss"] for record in early), default=math.nan)
        return Finding(
            "loss collapsed to 0",
            False,
            f"lowest first-epoch loss by step {COLLAPSE_STEPS}: {low:.4f} (a collapse: below "
            f"{COLLAPSE_LOSS} with rewards/accuracies 1)",
        )
    first = collapsed[0]
    detail = (
        f"loss {first['loss']:.3g} with rewards/accuracies 1 at step {first['step']} (margin "
        f"{_number(first, 'rewards/margins') or math.nan:.3g}): the pairs are told apart trivially (chosen and "
        f"rejected differ in something easy, or are off-policy for the model); there is little left to learn"
    )
    return Finding("loss collapsed to 0", True, detail, tuple(r["step"] for r in collapsed), SEE["collapse"])


def check_displacement(records: list[dict]) -> Finding:
    """Symptom 3: rewards/chosen below 0 while the margin is positive at most steps, and the margin growing."""
    rows = [
        record
        for record in records
        if _number(record, "rewards/chosen") is not None and _number(record, "rewards/margins") is not None
    ]
    if len(rows) < 2:
        return Finding(
            "likelihood displacement", False, "fewer than 2 steps with rewards/chosen and rewards/margins", fault=False
        )
    shown = [record for record in rows if record["rewards/chosen"] < 0 < record["rewards/margins"]]
    half = len(rows) // 2
    margins = [statistics.fmean(r["rewards/margins"] for r in part) for part in (rows[:half], rows[half:])]
    chosen = [statistics.fmean(r["rewards/chosen"] for r in part) for part in (rows[:half], rows[half:])]
    share = len(shown) / len(rows)
    detail = (
        f"rewards/chosen < 0 < rewards/margins at {len(shown)} of {len(rows)} steps ({share:.0%}"
        + (f", from step {shown[0]['step']}" if shown else "")
        + f"); mean margin {margins[0]:.3f} (first half)"
        f" -> {margins[1]:.3f} (second half), mean rewards/chosen {chosen[0]:.3f} -> {chosen[1]:.3f}"
    )
    found = share >= DISPLACEMENT_SHARE and margins[1] > margins[0]
    if found:
        detail += (
            "; the chosen responses lose probability too, only less than the rejected ones: common, and not "
            "by itself a fault (read the held-out reward and samples)"
        )
    return Finding(
        "likelihood displacement",
        found,
        detail,
        tuple(r["step"] for r in shown) if found else (),
        SEE["displacement"],
        fault=False,
    )


def check_finite(records: list[dict]) -> Finding:
    """Symptom 4: NaN or inf in the loss or grad_norm, from the first step that has one."""
    bad = [
        record
        for record in records
        if any(
            (value := _number(record, key)) is not None and not math.isfinite(value) for key in ("loss", "grad_norm")
        )
    ]
    if not bad:
        return Finding("NaN or inf", False, "loss and grad_norm finite at every step")
    first = bad[0]
    detail = (
        f"first at step {first['step']} (loss {first['loss']}, grad_norm {first.get('grad_norm')}), "
        f"{len(bad)} of {len(records)} steps; lower the learning rate, or train in float32 (fp16 overflows)"
    )
    return Finding("NaN or inf", True, detail, tuple(r["step"] for r in bad), SEE["non-finite"])


def check_kl(records: list[dict]) -> Finding:
    """Symptom 5: the held-out KL (eval/kl) growing to KL_RUNAWAY_RATIO times its first value."""
    rows = [record for record in records if (kl := _number(record, "eval/kl")) is not None and math.isfinite(kl)]
    if not rows:
        return Finding("KL running away", False, "no eval/kl in the log (dpo-edu run logs it; TRL does not)")
    first, last = rows[0], rows[-1]
    growth = last["eval/kl"] / max(first["eval/kl"], KL_FLOOR)
    detail = (
        f"eval/kl {first['eval/kl']:.3g} at step {first['step']} -> {last['eval/kl']:.3g} at step "
        f"{last['step']} (x{growth:.2f} over {len(rows)} evaluations)"
    )
    found = len(rows) >= 2 and growth >= KL_RUNAWAY_RATIO
    if found:
        detail += "; raise beta (a stronger pull to the reference), or stop earlier"
    return Finding("KL running away", found, detail, tuple(r["step"] for r in rows) if found else (), SEE["kl"])


def check_heldout(records: list[dict]) -> Finding:
    """Symptom 6: the held-out DPO loss (eval/loss; TRL's eval_loss) rising from its lowest while the training loss
    falls: the pairs trained on are being fitted, the held-out ones no longer."""
    rows = [
        record for record in records if (value := _number(record, "eval/loss")) is not None and math.isfinite(value)
    ]
    if len(rows) < 2:
        return Finding("held-out loss rising", False, "fewer than 2 held-out losses (eval/loss, eval_loss) in the log")
    lowest = min(rows, key=lambda record: record["eval/loss"])
    last = rows[-1]
    train = [record["loss"] for record in records if record["step"] >= lowest["step"]]
    found = last["eval/loss"] > lowest["eval/loss"] + HELDOUT_RISE and train[-1] < train[0]
    if lowest is last:
        return Finding(
            "held-out loss rising",
            False,
            f"eval/loss {rows[0]['eval/loss']:.4f} at step "
            f"{rows[0]['step']} -> {last['eval/loss']:.4f} at step {last['step']}, lowest at the end",
        )
    detail = (
        f"eval/loss lowest {lowest['eval/loss']:.4f} at step {lowest['step']}, {last['eval/loss']:.4f} at step "
        f"{last['step']}; training loss {train[0]:.4f} -> {train[-1]:.4f} over the same steps"
    )
    if found:
        detail += "; stop at the lowest held-out loss (fewer epochs), or lower the learning rate"
    return Finding(
        "held-out loss rising",
        found,
        detail,
        tuple(r["step"] for r in rows if r["step"] > lowest["step"]) if found else (),
        SEE["held-out"],
    )


CHECKS = (check_ln2, check_collapse, check_displacement, check_finite, check_kl, check_heldout)


def diagnose(path: str | Path) -> Diagnosis:
    """Read the log at `path` (metrics.jsonl, trainer_state.json, or a folder with one) and check every symptom.

    Returns a Diagnosis (print it for the report); raises DiagnoseError for a file that cannot be read as a log.
    """
    source, records = read_log(path)
    return Diagnosis(str(path), source, records, [check(records) for check in CHECKS])
