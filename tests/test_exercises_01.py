"""Notebook 01's exercises (predict the naive ratio's nan count, derive the log-likelihood's gradient): the right
answer passes, a stub is "not attempted", and typical wrong answers fail with a hint that does not give the answer."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpo_edu import bradley_terry
from dpo_edu import exercises as ex

N = 2000


def _tail(threshold):
    return 0.5 * math.erfc(threshold / math.sqrt(2))


OVERFLOW, UNDERFLOW = _tail(0.8872), _tail(1.0397)  # float32 exp limits over the reward scale of 100
RIGHT_NANS = N * (OVERFLOW + UNDERFLOW**2)


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def _not_attempted(*args):
    raise NotImplementedError


def test_nan_count_accepts_the_reasoned_prediction(capsys):
    result, out = _verdict(capsys, ex.check_01_nan_count, RIGHT_NANS, N)
    assert result is True and "correct" in out
    assert ex.check_01_nan_count(OVERFLOW * N, N) is True  # the overflow alone is the bulk: within 20 %
    assert ex.check_01_nan_count(200 * (OVERFLOW + UNDERFLOW**2), 200) is True  # the smoke profile's size


def test_nan_count_truth_is_the_naive_ratio_itself():
    """The checker's truth comes from computing the naive ratio, so it matches what notebook 01's cell counts."""
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = (100 * torch.randn(200_000, generator=generator) for _ in range(2))
    naive = chosen.exp() / (chosen.exp() + rejected.exp())
    assert ex.check_01_nan_count(naive.isnan().sum().item() * N / 200_000, N) is True


def test_nan_count_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_01_nan_count, None, N)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("answer, hint", [
    (OVERFLOW + UNDERFLOW**2, "looks like a fraction"),
    (100 * (OVERFLOW + UNDERFLOW**2), "looks like a percentage"),
    (N * (1 - (1 - OVERFLOW) ** 2), "only the rejected reward overflows"),  # either exp overflows
    (N * OVERFLOW**2, "inf / (inf + anything) is nan already"),  # both must overflow
    (0, "no nan at all"),
    (N / 2, "too many"),
    (N * 0.05, "too few"),
])
def test_nan_count_names_each_slip_without_the_answer(capsys, answer, hint):
    result, out = _verdict(capsys, ex.check_01_nan_count, answer, N)
    assert result is False and hint in out, out
    assert not any(str(value) in out for value in (round(RIGHT_NANS), round(RIGHT_NANS, 1))), out


def right_gradient(scores, winners, losers):
    weight = torch.sigmoid(scores[losers] - scores[winners])
    return torch.zeros_like(scores).index_add(0, winners, weight).index_add(0, losers, -weight)


def overwriting_gradient(scores, winners, losers):
    weight = torch.sigmoid(scores[losers] - scores[winners])
    gradient = torch.zeros_like(scores)
    gradient[winners] += weight
    gradient[losers] -= weight
    return gradient


def win_probability_gradient(scores, winners, losers):
    weight = torch.sigmoid(scores[winners] - scores[losers])
    return torch.zeros_like(scores).index_add(0, winners, weight).index_add(0, losers, -weight)


def winners_only_gradient(scores, winners, losers):
    return torch.zeros_like(scores).index_add(0, winners, torch.sigmoid(scores[losers] - scores[winners]))


def test_score_gradient_accepts_the_derivation(capsys):
    result, out = _verdict(capsys, ex.check_01_score_gradient, right_gradient)
    assert result is True and "correct" in out


def test_score_gradient_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_01_score_gradient, _not_attempted)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("gradient, hint", [
    (lambda s, w, l: -right_gradient(s, w, l), "negative log-likelihood"),
    (winners_only_gradient, "games it lost"),
    (win_probability_gradient, "probability that the winner wins"),
    (lambda s, w, l: right_gradient(s, w, l) / len(w), "averaged"),
    (lambda s, w, l: right_gradient(s, l, w), "swapped"),
    (overwriting_gradient, "index_add"),
    (lambda s, w, l: F.logsigmoid(s[w] - s[l]).sum(), "shape"),  # the log-likelihood, not its gradient
])
def test_score_gradient_names_each_slip(capsys, gradient, hint):
    result, out = _verdict(capsys, ex.check_01_score_gradient, gradient)
    assert result is False and hint in out, out
    assert "sigmoid(s_l - s_w)" not in out and "index_add(0, winners" not in out, out


def test_score_gradient_compares_with_the_package_likelihood():
    """The checker's truth is autograd through bradley_terry.log_likelihood (a sanity check of the test's own right
    answer against it)."""
    scores = torch.randn(5, dtype=torch.float64, requires_grad=True)
    winners, losers = torch.tensor([0, 1, 1, 4]), torch.tensor([1, 0, 2, 1])
    (expected,) = torch.autograd.grad(bradley_terry.log_likelihood(scores, winners, losers), scores)
    assert torch.allclose(right_gradient(scores.detach(), winners, losers), expected)
