"""Checkers for the notebooks' exercises.

Each `check_*` takes the learner's answer (a value or a function), tests it
against the package's own implementation on fresh inputs, and prints one line:
"correct - ..." (returns True) or "wrong - <hint>" (returns False). The hint
names the mistake without printing the answer. A checker never raises: a
function that raises, returns None or returns the wrong type or shape is a
wrong answer like any other.
An exercise left as `raise NotImplementedError` (or a value left as None)
prints "not attempted yet" and returns None, so a notebook still runs top to
bottom before it is solved, and `assert check_...(...)` fails until it is.

Exercise kinds (each stub cell carries one as a cell tag, `exercise:<kind>`, and
tests/test_exercise_rules.py counts them): **predict** a number or a direction
before the notebook shows it; **derive** something the notebook does not show;
**diagnose** a broken log, function or run; **implement** code the notebook
taught. At least two thirds of the course's exercises are of the first three
kinds, and every notebook from 01 on has at least one of them.

A solution cell checks its answer with `solved(check_..., answer)`: the checker
runs, prints nothing when it passes (so "Run all" never shows the answer below
a learner's own attempt) and prints its one line when it fails, and `assert
solved(...)` stops the notebook then (CI executes every solution).
"""

import contextlib
import io
from typing import Any, Callable

from .nb00 import (  # noqa: F401
    SIGN_BUG_CANDIDATES,
    SMOLLM2_PARAMETERS,
    check_00_sign_bugs,
    check_00_training_memory,
)
from .nb01 import (  # noqa: F401
    check_01_nan_count,
    check_01_score_gradient,
)
from .nb02 import (  # noqa: F401
    check_02_kl_formula,
    check_02_kl_limits,
)
from .nb03 import (  # noqa: F401
    FAULTS_03,
    check_03_diagnosis,
    check_03_first_step,
    check_03_step_prediction,
    suspects_03,
)
from .nb04 import (  # noqa: F401
    FAULTS_04,
    check_04_logprob_faults,
    check_04_unmasked_padding,
    check_04b_bf16_bound,
    suspects_04,
)
from .nb05 import (  # noqa: F401
    SILENT_BUG_CANDIDATES,
    check_05_silent_bugs,
    check_05_two_response_limit,
    check_05_uncovered_response,
    check_05b_frontier_slope,
    check_05b_ipo_neighbours,
)
from .nb06 import CAUSES_06, check_06_diagnosis, check_06_first_numbers, print_run_logs_06, run_logs_06  # noqa: F401
from .nb07 import check_07_kl_direction, check_07_odpo_loss, check_07_start_weights  # noqa: F401
from .nb08 import (  # noqa: F401
    BOUNDED_LOSSES_08,
    SUSPECTS_08,
    check_08_bounded,
    check_08_diagnosis,
    check_08_rdpo_floor,
)
from .nb09 import (  # noqa: F401
    STALLED_LOGS_09,
    check_09_learning_rate,
    check_09_seen_unseen,
    check_09_stall,
)
from .nb10 import (  # noqa: F401
    REWARD_MODEL_LOGS_10,
    check_10_bon_kl,
    check_10_frontier,
    check_10_reward_model,
)


def solved(check: Callable[..., bool | None], *answer: Any) -> bool:
    """Whether `check(*answer)` passes, printing nothing when it does (a solution cell's check: see above).

    When it does not pass, the checker's one line is printed, so a failing solution says why.
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        verdict = check(*answer)
    if verdict is not True:
        print(printed.getvalue(), end="")
    return verdict is True


__all__ = [
    "solved",
    "check_00_sign_bugs",
    "check_00_training_memory",
    "SIGN_BUG_CANDIDATES",
    "SMOLLM2_PARAMETERS",
    "check_01_nan_count",
    "check_01_score_gradient",
    "check_02_kl_limits",
    "check_02_kl_formula",
    "check_03_step_prediction",
    "check_03_first_step",
    "check_03_diagnosis",
    "suspects_03",
    "FAULTS_03",
    "check_04_unmasked_padding",
    "check_04_logprob_faults",
    "check_04b_bf16_bound",
    "FAULTS_04",
    "suspects_04",
    "check_05_uncovered_response",
    "check_05_two_response_limit",
    "check_05_silent_bugs",
    "SILENT_BUG_CANDIDATES",
    "check_05b_ipo_neighbours",
    "check_05b_frontier_slope",
    "check_06_first_numbers",
    "check_06_diagnosis",
    "print_run_logs_06",
    "run_logs_06",
    "CAUSES_06",
    "check_07_odpo_loss",
    "check_07_start_weights",
    "check_07_kl_direction",
    "check_08_bounded",
    "check_08_rdpo_floor",
    "check_08_diagnosis",
    "BOUNDED_LOSSES_08",
    "SUSPECTS_08",
    "check_09_stall",
    "check_09_seen_unseen",
    "check_09_learning_rate",
    "STALLED_LOGS_09",
    "check_10_reward_model",
    "check_10_bon_kl",
    "check_10_frontier",
    "REWARD_MODEL_LOGS_10",
]
