"""Notebook 06's predict and diagnose checkers: the right answer passes, a stub is "not attempted", and typical wrong
answers fail with a hint that names the slip without giving the answer."""
import math

import pytest

from dpo_edu import exercises as ex

RIGHT_NUMBERS = {"win_rate": 0.5, "kl": 0.0, "loss": 0.6931, "accuracy": 0.0}
RIGHT_CAUSES = {"A": "labels masked", "B": "healthy", "C": "reference is the policy", "D": "learning rate 0"}


def test_first_numbers_right_typed_to_4_decimals_or_exact(capsys):
    assert ex.check_06_first_numbers(RIGHT_NUMBERS) is True
    assert ex.check_06_first_numbers({**RIGHT_NUMBERS, "loss": math.log(2), "kl": 0}) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("stub", [None, dict.fromkeys(RIGHT_NUMBERS)])
def test_first_numbers_not_attempted(capsys, stub):
    assert ex.check_06_first_numbers(stub) is None
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("changes, hint", [
    ({"win_rate": 1.0}, "does a tie count as a win?"),
    ({"win_rate": 0.0}, "does a tie count as a loss?"),
    ({"accuracy": 0.5}, "is a margin of exactly 0 above 0?"),
    ({"accuracy": 1.0}, "is a margin of exactly 0 above 0?"),
    ({"loss": 0.5}, "0.5 is sigmoid(0)"),
    ({"loss": 0.0}, "infinite margin"),
    ({"kl": 0.6931}, "what is log(pi / pi_ref) of any sample?"),
    ({"loss": 1.0}, "every log-ratio is 0"),
])
def test_first_numbers_wrong_answers_get_a_hint_without_the_value(capsys, changes, hint):
    assert ex.check_06_first_numbers({**RIGHT_NUMBERS, **changes}) is False
    out = capsys.readouterr().out
    assert hint in out and "0.693" not in out and "ln 2" not in out, out


def test_first_numbers_malformed(capsys):
    assert ex.check_06_first_numbers({"win_rate": 0.5}) is False
    assert ex.check_06_first_numbers({**RIGHT_NUMBERS, "loss": "ln 2"}) is False
    assert capsys.readouterr().out.count("wrong") == 2


def test_the_logs_show_what_their_causes_make():
    """The logs themselves: ln 2 throughout but in the healthy run, lr 0 only in D, no gradient only in A."""
    logs = ex.run_logs_06()
    assert all(abs(row["loss"] - math.log(2)) < 1e-12 for name in "ACD" for row in logs[name])
    assert logs["B"][-1]["loss"] < logs["B"][0]["loss"] and logs["B"][-1]["margin"] > 0
    assert [name for name, rows in logs.items() if all(row["lr"] == 0 for row in rows)] == ["D"]
    assert [name for name, rows in logs.items() if all(row["grad_norm"] == 0 for row in rows)] == ["A"]
    assert logs["C"][0]["chosen"] != logs["C"][-1]["chosen"] and logs["D"][0]["chosen"] == logs["D"][-1]["chosen"]


def test_diagnosis_right_and_not_attempted(capsys):
    assert ex.check_06_diagnosis(RIGHT_CAUSES) is True
    assert ex.check_06_diagnosis({name: f" {cause.upper()} " for name, cause in RIGHT_CAUSES.items()}) is True
    assert ex.check_06_diagnosis(None) is None and ex.check_06_diagnosis(dict.fromkeys(RIGHT_CAUSES)) is None


@pytest.mark.parametrize("changes, column", [
    ({"A": "learning rate 0", "D": "labels masked"}, "lr"),
    ({"C": "healthy"}, "loss"),
    ({"C": "learning rate 0"}, "lr"),
    ({"A": "reference is the policy"}, "grad_norm"),
    ({"B": "reference is the policy"}, "loss"),
    ({"D": "reference is the policy"}, "lr"),
])
def test_diagnosis_wrong_names_the_column_not_the_cause(capsys, changes, column):
    assert ex.check_06_diagnosis({**RIGHT_CAUSES, **changes}) is False
    out = capsys.readouterr().out
    assert f"another {column} column" in out, out
    given = set(changes.values())
    for name in changes:
        if RIGHT_CAUSES[name] not in given:
            assert repr(RIGHT_CAUSES[name]) not in out, out


def test_diagnosis_malformed(capsys):
    assert ex.check_06_diagnosis({"A": "healthy"}) is False
    assert ex.check_06_diagnosis({**RIGHT_CAUSES, "A": "warm-up"}) is False
    assert "is not one of" in capsys.readouterr().out
