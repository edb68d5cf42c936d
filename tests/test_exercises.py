"""Each checker accepts a right answer, rejects a wrong one, and reports a stub as not attempted."""
import pytest
import torch
import torch.nn.functional as F

from dpo_edu import exercises as ex


def stub(*args):
    raise NotImplementedError


CASES = [
    (ex.check_07_odpo_loss, lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr)) - o), lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr))) - o),
]


@pytest.mark.parametrize("checker, right, wrong", CASES, ids=[case[0].__name__ for case in CASES])
def test_function_checkers(checker, right, wrong, capsys):
    assert checker(right) is True
    assert "correct" in capsys.readouterr().out
    assert checker(wrong) is False
    assert "wrong - " in capsys.readouterr().out
    assert checker(stub) is None
    assert "not attempted" in capsys.readouterr().out
