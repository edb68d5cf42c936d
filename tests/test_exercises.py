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


def _right_logprobs(logits, labels, shift=True):
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    logps = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


def _right_labels(input_ids, prompt_lengths, attention_mask):
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    positions = torch.arange(input_ids.shape[1])
    return labels.masked_fill(positions[None, :] < prompt_lengths[:, None], -100)


CASES = [
    (ex.check_00_device_order, lambda cuda, mps: "cuda" if cuda else "mps" if mps else "cpu", lambda cuda, mps: "mps" if mps else "cuda" if cuda else "cpu"),
    (ex.check_01_stable_probability, lambda a, b: torch.sigmoid(a - b), lambda a, b: a.exp() / (a.exp() + b.exp())),
    (ex.check_01_negative_log_likelihood, lambda s, w, l: -F.logsigmoid(s[w] - s[l]).sum(), lambda s, w, l: -F.logsigmoid(s[w] - s[l]).mean()),
    (ex.check_02_optimal_policy, lambda p, r, b: torch.softmax(p.log() + r / b, -1), lambda p, r, b: p * (r / b).exp() / (p * (r / b).exp()).sum()),
    (ex.check_03_dpo_loss, right_dpo, lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr))),
    (ex.check_04_sequence_logprobs, lambda z, y: _right_logprobs(z, y), lambda z, y: _right_logprobs(z, y, shift=False)),
    (ex.check_04_labels, lambda ids, n, m: _right_labels(ids, n, m), lambda ids, n, m: ids.masked_fill(m == 0, -100)),
    (ex.check_05_total_variation, lambda p, q: 0.5 * (p - q).abs().sum(-1), lambda p, q: (p - q).abs().sum(-1)),
    (ex.check_05_ipo_ratio, lambda w, l, b: w / l * math.exp(1 / (2 * b)), lambda w, l, b: w / l * math.exp(1 / b)),
    (ex.check_06_win_rate, lambda p, r: sum((a > b) + 0.5 * (a == b) for a, b in zip(p, r)) / len(p), lambda p, r: sum(a > b for a, b in zip(p, r)) / len(p)),
    (ex.check_06_kl_estimate, lambda p, r: (p - r).mean(), lambda p, r: (r - p).mean()),
    (ex.check_07_odpo_loss, lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr)) - o), lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr))) - o),
    (ex.check_07_offset, lambda w, l, a: a * torch.log((w - l).clamp_min(1e-3)), lambda w, l, a: a * torch.log(w - l)),
    (ex.check_03_gradient_weight, lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pr - rr) - (pc - rc))), lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pc - rc) - (pr - rr)))),
]


@pytest.mark.parametrize("checker, right, wrong", CASES, ids=[case[0].__name__ for case in CASES])
def test_function_checkers(checker, right, wrong, capsys):
    assert checker(right) is True
    assert "correct" in capsys.readouterr().out
    assert checker(wrong) is False
    assert "wrong - " in capsys.readouterr().out
    assert checker(stub) is None
    assert "not attempted" in capsys.readouterr().out


def test_value_checkers(capsys):
    assert ex.check_00_initial_dpo_loss(-math.log(0.5)) is True
    assert ex.check_00_initial_dpo_loss(0.6931) is False  # typed from a printout, not computed
    assert "typed in" in capsys.readouterr().out
    assert ex.check_00_initial_dpo_loss(0.5) is False
    assert "probability" in capsys.readouterr().out  # 0.5 is sigmoid(0), not the loss
    assert ex.check_00_initial_dpo_loss(None) is None
    assert ex.check_02_log10_sequences(10 * math.log10(49_152), 49_152, 10) is True
    assert ex.check_02_log10_sequences(49_152**10, 49_152, 10) is False
    assert ex.check_02_log10_sequences(None, 49_152, 10) is None
