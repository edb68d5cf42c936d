"""Notebook 07's thinking exercises: the right answer passes, None is "not attempted", wrong ones get a hint."""
import math

import pytest

from dpo_edu.exercises import check_07_kl_direction, check_07_start_weights

CHOSEN, REJECTED = (0.9, 0.12), (-0.8, 0.0)  # section 1's strong and weak pairs


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_start_weights_right_answer_passes(capsys):
    right = {"strong": sigmoid(math.log(1.7)), "weak": sigmoid(math.log(0.12))}
    assert check_07_start_weights(right, CHOSEN, REJECTED, 1.0) is True
    assert check_07_start_weights({"strong": None, "weak": None}, CHOSEN, REJECTED, 1.0) is None


@pytest.mark.parametrize("answer, hint", [
    ({"strong": 0.5, "weak": 0.5}, "DPO's weight"),
    ({"strong": 1 - sigmoid(math.log(1.7)), "weak": sigmoid(math.log(0.12))}, "sign of the offset"),
    ({"strong": math.log(1.7), "weak": math.log(0.12)}, "sigmoid(offset - beta h)"),
    ({"strong": "0.63", "weak": 0.1}, "a number"),
    ({"strong": 0.63}, "expected a dict"),
])
def test_start_weights_wrong_answers_get_a_hint(answer, hint, capsys):
    assert check_07_start_weights(answer, CHOSEN, REJECTED, 1.0) is False
    assert hint in capsys.readouterr().out


def sweep(*kl_differences):
    return {"odpo_minus_dpo": [{"setting": "all pairs", "by_beta": [{"beta": b, "reward": 0.0, "kl": d}
                                                                    for b, d in zip((0.05, 5.0, 1.0), kl_differences)]}]}


@pytest.mark.parametrize("differences, truth", [((0.3, 0.1), "more"), ((-0.3, -0.1), "less"), ((0.3, -0.1), "mixed")])
def test_kl_direction_is_read_from_the_sweep(differences, truth, capsys):
    summary = sweep(*differences)
    assert check_07_kl_direction.truth(summary) == truth
    assert check_07_kl_direction(truth, summary) is True
    assert check_07_kl_direction({"more": "less", "less": "more", "mixed": "more"}[truth], summary) is False
    assert check_07_kl_direction(None, summary) is None
    assert check_07_kl_direction("higher", summary) is False
    assert "answer 'more', 'less' or 'mixed'" in capsys.readouterr().out
