"""Notebook 03's predict and diagnose checkers: the right answer passes, a stub is "not attempted", and the typical
wrong answers fail with a hint that names the slip without giving the answer."""
import math

import pytest
import torch

from dpo_edu import exercises as ex
from dpo_edu import losses
from dpo_edu.exercises import nb03

RIGHT_STEP = {0.1: {"loss": math.log(2), "margin": 0.0, "slope": -0.05},
              1.0: {"loss": math.log(2), "margin": 0.0, "slope": -0.5}}
RIGHT_DIAGNOSIS = {"A": "log dropped", "B": "references swapped", "C": "correct", "D": "sign flipped"}
STEP_GIVEAWAYS = ("0.69", "ln 2", "log 2", "-0.05", "-0.5", "beta/2", "0.0 ")


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def _with(beta, **changes):
    """RIGHT_STEP with some of one beta's values changed."""
    return {b: {**answers, **changes} if b == beta else dict(answers) for b, answers in RIGHT_STEP.items()}


def test_first_step_accepts_the_right_answer_typed_to_4_decimals(capsys):
    result, out = _verdict(capsys, ex.check_03_first_step, RIGHT_STEP)
    assert result is True and "correct" in out
    typed = {0.1: {"loss": 0.6931, "margin": 0, "slope": -0.05}, 1.0: {"loss": 0.6931, "margin": 0, "slope": -0.5}}
    assert ex.check_03_first_step(typed) is True


def test_first_step_not_attempted(capsys):
    stub = {beta: {"loss": None, "margin": None, "slope": None} for beta in (0.1, 1.0)}
    assert ex.check_03_first_step(stub) is None
    assert ex.check_03_first_step(None) is None
    assert capsys.readouterr().out.count("not attempted") == 2


@pytest.mark.parametrize("answer, hint", [
    (_with(0.1, loss=0.5), "sigma(0), the preference probability"),
    (_with(0.1, loss=0.0), "learnt nothing"),
    (_with(0.1, loss=-math.log(2)), "negative loss"),
    (_with(0.1, loss=0.1 * math.log(2)), "beta multiplies the margin inside the sigmoid"),
    (_with(1.0, loss=-math.log(2)), "negative loss"),
    (_with(0.1, margin=1.0), "what is each log-ratio"),
    (_with(0.1, slope=+0.05), "wrong sign"),
    (_with(0.1, slope=0.0), "not at a minimum"),
    (_with(0.1, slope=-0.1), "what is sigmoid at the start's margin"),
    (_with(1.0, slope=-1.0), "what is sigmoid at the start's margin"),
    (_with(0.1, slope=-0.5), "beta looks missing"),
    (_with(0.1, slope=-0.025), "off by a factor 2"),
    ({0.1: dict(RIGHT_STEP[1.0]), 1.0: dict(RIGHT_STEP[0.1])}, "look swapped"),
    (_with(1.0, loss=0.3133), "not what the loss gives at step 1"),
])
def test_first_step_names_each_slip_without_the_answer(capsys, answer, hint):
    result, out = _verdict(capsys, ex.check_03_first_step, answer)
    assert result is False and hint in out, out
    for giveaway in STEP_GIVEAWAYS:
        assert giveaway not in out.split("wrong - ", 1)[1], (giveaway, out)


def test_first_step_rejects_malformed_answers(capsys):
    for answer, hint in ((_with(0.1, loss=None), "still None"), ({0.1: RIGHT_STEP[0.1]}, "as keys"),
                         ({0.1: {"loss": math.log(2)}, 1.0: RIGHT_STEP[1.0]}, "with the keys"),
                         (_with(1.0, slope="-1/2"), "expected a real number"), ("ln 2", "expected a dict")):
        result, out = _verdict(capsys, ex.check_03_first_step, answer)
        assert result is False and hint in out, (answer, out)


def test_first_step_truth_is_computed_by_dpo_loss(monkeypatch):
    """With a DPO loss whose beta is doubled, the answer for the true loss fails and the doubled slopes pass."""
    real = losses.dpo_loss
    monkeypatch.setattr(nb03.losses, "dpo_loss", lambda *args: real(*args[:4], 2 * args[4]))
    assert ex.check_03_first_step(RIGHT_STEP) is False
    doubled = {beta: {**answers, "slope": 2 * answers["slope"]} for beta, answers in RIGHT_STEP.items()}
    assert ex.check_03_first_step(doubled) is True


def test_diagnosis_accepts_the_right_answer(capsys):
    result, out = _verdict(capsys, ex.check_03_diagnosis, RIGHT_DIAGNOSIS, 0.1)
    assert result is True and "correct" in out
    assert ex.check_03_diagnosis({name: fault.upper() + " " for name, fault in RIGHT_DIAGNOSIS.items()}) is True


def test_diagnosis_not_attempted(capsys):
    assert ex.check_03_diagnosis({name: None for name in "ABCD"}, 0.1) is None
    assert ex.check_03_diagnosis(None) is None
    assert capsys.readouterr().out.count("not attempted") == 2


@pytest.mark.parametrize("changes, hint", [
    ({"A": "correct"}, "suspect A: a correct DPO loss would print something else on pair 2"),  # passes the ln 2 check
    ({"D": "correct"}, "suspect D: a correct DPO loss would print something else on pair 2"),
    ({"B": "no reference"}, "suspect B: a loss with the fault 'no reference' would print something else on pair 1"),
    ({"B": "beta missing"}, "suspect B: a loss with the fault 'beta missing' would print something else on pair 1"),
    ({"A": "sign flipped", "D": "log dropped"}, "(and 1 more of your diagnoses are wrong)"),
    ({"C": "minus missing"}, "suspect C: a loss with the fault 'minus missing' would print something else on pair 1"),
    ({"D": "sign"}, "'sign' is not one of 'correct', 'sign flipped'"),
])
def test_diagnosis_names_where_a_wrong_one_fails_without_the_answer(capsys, changes, hint):
    result, out = _verdict(capsys, ex.check_03_diagnosis, {**RIGHT_DIAGNOSIS, **changes}, 0.1)
    assert result is False and hint in out, out
    if "is not one of" not in hint:  # the menu lists every fault; a wrong diagnosis's hint names none but the learner's
        given = set(changes.values())  # the learner's own words may be another suspect's answer: they are theirs
        for name in changes:
            if RIGHT_DIAGNOSIS[name] not in given:
                assert repr(RIGHT_DIAGNOSIS[name]) not in out, out


def test_diagnosis_rejects_malformed_answers(capsys):
    for answer in ({"A": "log dropped"}, ["log dropped"] * 4, "ABCD"):
        result, out = _verdict(capsys, ex.check_03_diagnosis, answer, 0.1)
        assert result is False and "one diagnosis for each suspect" in out, out


def test_every_fault_shows_on_the_printed_probe():
    """The exercise is solvable from the table: any two faults print different losses on some probe pair."""
    suspects, probe = ex.suspects_03()
    printed = {fault: loss(*probe.T, 0.1) for fault, loss in ex.FAULTS_03.items()}
    faults = list(printed)
    for i, first in enumerate(faults):
        for second in faults[i + 1:]:
            assert (printed[first] - printed[second]).abs().max() > 1e-3, (first, second)
    torch.testing.assert_close(printed["correct"], losses.dpo_loss(*probe.T, 0.1)[0])
    for name, suspect in suspects.items():
        torch.testing.assert_close(suspect(*probe.T, 0.1), printed[RIGHT_DIAGNOSIS[name]])
