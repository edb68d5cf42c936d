"""Checkers for notebook 06 (the full run) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math

from ._checking import _NotAttempted, _number, _verdict, _Wrong

# ------------------------------------------- 06: the numbers of a run's first step (predict)

# The truth needs no run: at step 0 the policy is the reference, every log-ratio is 0, and the conventions decide
# the rest (a win-rate tie counts 1/2; accuracy counts a margin > 0, so a margin of exactly 0 counts 0).
FIRST_NUMBERS_06 = {"win_rate": 0.5, "kl": 0.0, "loss": math.log(2), "accuracy": 0.0}
_06_FIRST_SLIPS = {
    "win_rate": {
        1.0: "every opening is a tie here: does a tie count as a win?",
        0.0: "every opening is a tie here: does a tie count as a loss?",
    },
    "kl": {},
    "loss": {
        0.0: "a loss of 0 would need an infinite margin; what is -log sigmoid(0)?",
        0.5: "0.5 is sigmoid(0), the probability; the loss is its negative log",
    },
    "accuracy": {
        0.5: "accuracy is the share of pairs whose margin is > 0: is a margin of exactly 0 above 0?",
        1.0: "accuracy is the share of pairs whose margin is > 0: is a margin of exactly 0 above 0?",
    },
}


def check_06_first_numbers(prediction: dict | None) -> bool:
    """prediction: {"win_rate", "kl"} of the evaluation at step 0 and {"loss", "accuracy"} of training step 1.

    Numbers within 1e-3 (typed to 4 decimals). A wrong one gets a hint about the convention it missed, not the value.
    """

    def body() -> str:
        if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
            raise _NotAttempted
        if not isinstance(prediction, dict) or sorted(prediction) != sorted(FIRST_NUMBERS_06):
            raise _Wrong(f"expected a dict with the keys {sorted(FIRST_NUMBERS_06)}")
        for key, truth in FIRST_NUMBERS_06.items():
            got = _number(prediction[key], key)
            if math.isclose(got, truth, abs_tol=1e-3):
                continue
            for value, hint in _06_FIRST_SLIPS[key].items():
                if math.isclose(got, value, abs_tol=1e-3):
                    raise _Wrong(f"{key}: {hint}")
            if key == "kl":
                raise _Wrong("kl: at step 0 the policy is the reference; what is log(pi / pi_ref) of any sample?")
            raise _Wrong(f"{key}: not {got:g}; start from: every log-ratio is 0 at step 0")
        return "ties: 1/2 in the win rate, 0 in the accuracy; the loss ln 2 and the KL 0, exactly"

    return _verdict("the first numbers of a run", body)


# ------------------------------------------- 06: four training logs, three of them broken (diagnose)

CAUSES_06 = ("healthy", "learning rate 0", "reference is the policy", "labels masked")
_06_LOG_CAUSES = {"A": "labels masked", "B": "healthy", "C": "reference is the policy", "D": "learning rate 0"}
_06_COLUMNS = ("step", "lr", "loss", "margin", "chosen", "rejected", "grad_norm")


def _06_log(cause: str) -> list[dict[str, float]]:
    """Five steps of a DPO log (the trainer's metric names, shortened) as `cause` makes them; `chosen` and
    `rejected` are the policy's summed log-probs (logps/chosen, logps/rejected)."""
    rows = []
    for step in range(1, 6):
        lr = 0.0 if cause == "learning rate 0" else 5e-5 * min(1.0, step / 2)
        drift = 0.0 if cause in ("learning rate 0", "labels masked") else 0.8 * (step - 1)
        margin = 0.04 * (step - 1) ** 1.5 if cause == "healthy" else 0.0
        chosen = 0.0 if cause == "labels masked" else -61.4 - drift
        rejected = 0.0 if cause == "labels masked" else -66.2 - 1.25 * drift
        rows.append(
            {
                "step": step,
                "lr": lr,
                "loss": math.log1p(math.exp(-margin)),
                "margin": margin,
                "chosen": chosen,
                "rejected": rejected,
                "grad_norm": 0.0 if cause == "labels masked" else 11.3 - 0.4 * step,
            }
        )
    return rows


def run_logs_06() -> dict[str, list[dict[str, float]]]:
    """The four logs of the diagnose exercise: {"A": [5 records], ...}; print them with print_run_logs_06."""
    return {name: _06_log(cause) for name, cause in _06_LOG_CAUSES.items()}


def print_run_logs_06() -> None:
    """Print the four logs, a table each: the columns a learner's own run logs (metrics.jsonl) show."""
    for name, rows in run_logs_06().items():
        print(f"run {name}")
        print("  " + " ".join(f"{column:>9}" for column in _06_COLUMNS))
        for row in rows:
            print("  " + " ".join(_06_cell(column, row[column]) for column in _06_COLUMNS))


def _06_cell(column: str, value: float) -> str:
    if column == "step":
        return f"{int(value):>9}"
    if column == "lr":
        return f"{value:>9.1e}"
    return f"{value:>9.4f}" if column in ("loss", "margin") else f"{value:>9.2f}"


def _06_signature(cause: str) -> dict[str, bool]:
    """What a log with `cause` shows, column by column."""
    rows = _06_log(cause)
    return {
        "lr": rows[-1]["lr"] > 0,
        "loss": rows[-1]["loss"] < rows[0]["loss"] - 1e-6,
        "grad_norm": rows[-1]["grad_norm"] > 0,
        "chosen": rows[-1]["chosen"] != rows[0]["chosen"],
    }


def check_06_diagnosis(diagnosis: dict | None) -> bool:
    """diagnosis: {"A": cause, "B": ..., "C": ..., "D": ...}, each cause one of CAUSES_06.

    A wrong diagnosis is answered with the column of that run's log that the named cause would show otherwise.
    """

    def body() -> str:
        if diagnosis is None or (isinstance(diagnosis, dict) and all(value is None for value in diagnosis.values())):
            raise _NotAttempted
        if not isinstance(diagnosis, dict) or sorted(diagnosis) != sorted(_06_LOG_CAUSES):
            raise _Wrong(f"expected a dict with one cause for each run {sorted(_06_LOG_CAUSES)}")
        problems = []
        for name, cause in sorted(diagnosis.items()):
            label = cause.strip().lower() if isinstance(cause, str) else cause
            if label not in CAUSES_06:
                problems.append(f"run {name}: {cause!r} is not one of {', '.join(map(repr, CAUSES_06))}")
            elif label != _06_LOG_CAUSES[name]:
                expected, shown = _06_signature(label), _06_signature(_06_LOG_CAUSES[name])
                column = next(column for column in expected if expected[column] != shown[column])
                problems.append(f"run {name}: a run with {label!r} would show another {column} column - read it again")
        if problems:
            others = f" (and {len(problems) - 1} more of your diagnoses are wrong)" if len(problems) > 1 else ""
            raise _Wrong(problems[0] + others)
        return (
            "ln 2 at every step has three causes, told apart by lr (0), grad_norm (0: nothing to score) and the "
            "log-probs (moving while the loss stays put: the reference moves with the policy)"
        )

    return _verdict("four training logs", body)
