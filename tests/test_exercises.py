"""Each checker accepts a right answer, rejects a wrong one, and reports a stub as not attempted."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpo_edu import exercises as ex


def stub(*args):
    raise NotImplementedError


def right_dpo(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


CASES = [
    (ex.check_00_device_order, lambda cuda, mps: "cuda" if cuda else "mps" if mps else "cpu", lambda cuda, mps: "mps" if mps else "cuda" if cuda else "cpu"),
    (ex.check_01_stable_probability, lambda a, b: torch.sigmoid(a - b), lambda a, b: a.exp() / (a.exp() + b.exp())),
    (ex.check_01_negative_log_likelihood, lambda s, w, l: -F.logsigmoid(s[w] - s[l]).sum(), lambda s, w, l: -F.logsigmoid(s[w] - s[l]).mean()),
    (ex.check_02_optimal_policy, lambda p, r, b: torch.softmax(p.log() + r / b, -1), lambda p, r, b: p * (r / b).exp() / (p * (r / b).exp()).sum()),
    (ex.check_03_dpo_loss, right_dpo, lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr))),
    (ex.check_03_gradient_weight, lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pr - rr) - (pc - rc))), lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pc - rc) - (pr - rr)))),
]


@pytest.mark.parametrize("checker, right, wrong", CASES, ids=[case[0].__name__ for case in CASES])
def test_function_checkers(checker, right, wrong, capsys):
    assert checker(right) is True
    assert "correct" in capsys.readouterr().out
    with pytest.raises(AssertionError):
        checker(wrong)
    assert checker(stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_value_checkers():
    assert ex.check_00_initial_dpo_loss(0.6931) is True
    with pytest.raises(AssertionError, match="hint"):
        ex.check_00_initial_dpo_loss(0.5)
    assert ex.check_00_initial_dpo_loss(None) is None
    assert ex.check_02_log10_sequences(10 * math.log10(49_152), 49_152, 10) is True
    with pytest.raises(AssertionError):
        ex.check_02_log10_sequences(49_152**10, 49_152, 10)
    assert ex.check_02_log10_sequences(None, 49_152, 10) is None
