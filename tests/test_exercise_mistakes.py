"""Every exercise checker rejects the mistakes learners make and accepts right answers.

A rejection is one printed line naming the problem and a returned False; a
checker never raises, whatever the learner's function returns or raises.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from dpo_edu import exercises as ex


def returns_none(*args):
    """A function whose author computed the answer and forgot `return`."""
    answer = args[0]  # noqa: F841


# ------------------------------------------------------------ right answers

def dpo_margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


def step_one_losses_equal_ln2():
    """The sign-bug exercise's answer, computed here independently of the checker."""
    logps = [-20 * torch.rand(32, dtype=torch.float64) for _ in range(2)]
    pc, pr, rc, rr = logps[0], logps[1], logps[0].clone(), logps[1].clone()
    candidates = {
        "a": -F.logsigmoid(0.1 * ((pr - rr) - (pc - rc))),
        "b": -F.logsigmoid(0.1 * ((rc - pc) - (rr - pr))),
        "c": F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))),
        "d": -F.logsigmoid(0.1 * (pc - pr)),
    }
    return {label for label, loss in candidates.items() if torch.allclose(loss, torch.full_like(loss, math.log(2)))}


RIGHT = [
    (ex.check_00_sign_bugs, "computed set", step_one_losses_equal_ln2()),
    (ex.check_00_sign_bugs, "list of capitals", [label.upper() for label in sorted(step_one_losses_equal_ln2())]),
    (ex.check_07_odpo_loss, "offset inside", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b) - o)),
]


@pytest.mark.parametrize("checker, label, answer", RIGHT, ids=[f"{case[0].__name__}-{case[1]}" for case in RIGHT])
def test_right_answer_accepted(checker, label, answer, capsys):
    assert checker(answer) is True
    assert "correct" in capsys.readouterr().out


# ------------------------------------------------------------------ mistakes

WRONG = [
    (ex.check_00_sign_bugs, "none pass", set()),
    (ex.check_00_sign_bugs, "only the swap", {"a"}),
    (ex.check_00_sign_bugs, "only the reference swap", {"b"}),
    (ex.check_00_sign_bugs, "the flipped loss too", {"a", "b", "c"}),
    (ex.check_00_sign_bugs, "the missing reference too", {"a", "b", "d"}),
    (ex.check_00_sign_bugs, "an unknown label", {"a", "e"}),
    (ex.check_00_sign_bugs, "a number", 2),
    (ex.check_07_odpo_loss, "forgotten return", returns_none),
    (ex.check_07_odpo_loss, "-log(sigmoid)", lambda pc, pr, rc, rr, b, o: -torch.log(torch.sigmoid(dpo_margin(pc, pr, rc, rr, b) - o))),
    (ex.check_07_odpo_loss, "log(1 + exp(-x))", lambda pc, pr, rc, rr, b, o: torch.log(1 + torch.exp(o - dpo_margin(pc, pr, rc, rr, b)))),
    (ex.check_07_odpo_loss, "offset outside", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b)) - o),
    (ex.check_07_odpo_loss, "offset added", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b) + o)),
    (ex.check_07_odpo_loss, "offset ignored", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b))),
    (ex.check_07_odpo_loss, "offset scaled by beta", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr) - o))),
]

# Pieces of the answer that a hint must not print.
FORMULA_FRAGMENTS = {
    ex.check_07_odpo_loss: ("sigmoid(beta", "beta * h - offset", "beta h - offset"),
}


@pytest.mark.parametrize("checker, label, answer", WRONG, ids=[f"{case[0].__name__}-{case[1]}" for case in WRONG])
def test_mistake_rejected_in_one_line(checker, label, answer, capsys):
    assert checker(answer) is False
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    assert "correct" not in lines[0] and "Traceback" not in lines[0]
    for fragment in FORMULA_FRAGMENTS.get(checker, ()):
        assert fragment not in lines[0], f"the hint gives the formula away: {lines[0]}"


FORGOTTEN_RETURNS = [(checker, answer) for checker, label, answer in WRONG if label == "forgotten return"]


@pytest.mark.parametrize("checker, answer", FORGOTTEN_RETURNS, ids=[case[0].__name__ for case in FORGOTTEN_RETURNS])
def test_forgotten_return_named(checker, answer, capsys):
    assert checker(answer) is False
    assert "your function returned None - did you forget `return`?" in capsys.readouterr().out


def test_sign_bug_hint_does_not_depend_on_which_bug(capsys):
    """The message says what kind of error the set holds, never which letter is wrong."""
    ex.check_00_sign_bugs({"a"})
    ex.check_00_sign_bugs({"b"})
    missing_a, missing_b = capsys.readouterr().out.strip().splitlines()
    ex.check_00_sign_bugs({"a", "b", "c"})
    ex.check_00_sign_bugs({"a", "b", "d"})
    extra_c, extra_d = capsys.readouterr().out.strip().splitlines()
    assert missing_a == missing_b and extra_c == extra_d and missing_a != extra_c


def test_sign_bug_answer_is_two_margin_flips():
    """Independently of the checker: the two margin flips give ln 2 at step 1, the other two bugs do not."""
    assert step_one_losses_equal_ln2() == {"a", "b"}


@pytest.mark.parametrize("checker", [ex.check_00_sign_bugs])
def test_value_checkers_not_attempted(checker, capsys):
    assert checker(None) is None
    assert "not attempted" in capsys.readouterr().out
