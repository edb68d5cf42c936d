"""Notebook 02's exercises (predict the KL of pi* at both ends of beta, derive the KL from E[r] and log Z): the right
answer passes, a stub is "not attempted", and typical wrong answers fail with a hint that does not give the answer."""
import math

import pytest
import torch

from dpo_edu import bandit
from dpo_edu import exercises as ex

# notebook 02's toy: the best reward is the least likely response under pi_ref
REF = torch.softmax(-0.6 * torch.arange(5, dtype=torch.float64), -1)
REWARDS = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)
GREEDY_KL = -math.log(REF[-1].item())


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def _not_attempted(*args):
    raise NotImplementedError


def test_kl_limits_accepts_the_right_limits(capsys):
    result, out = _verdict(capsys, ex.check_02_kl_limits, (GREEDY_KL, 0.0), REF, REWARDS)
    assert result is True and "correct" in out


def test_kl_limits_are_what_pi_star_tends_to():
    """The checker's truth is the limit of the KL of bandit.optimal_policy itself, at a tiny and a huge beta; a tie
    for the best reward is renormalised over both."""
    for rewards in (REWARDS, torch.tensor([0.0, 2.0, 1.0, 2.0, -1.0], dtype=torch.float64)):
        ends = []
        for beta in (1e-4, 1e6):
            optimum = bandit.optimal_policy(REF, rewards, beta)
            ends.append((optimum * (optimum.clamp_min(1e-300).log() - REF.log())).sum().item())
        assert ex.check_02_kl_limits(tuple(ends), REF, rewards) is True


def test_kl_limits_not_attempted(capsys):
    for stub in ((None, None), None):
        result, out = _verdict(capsys, ex.check_02_kl_limits, stub, REF, REWARDS)
        assert result is None and "not attempted" in out


@pytest.mark.parametrize("limits, hint", [
    ((0.0, GREEDY_KL), "look swapped"),
    ((-GREEDY_KL, 0.0), "never negative"),
    ((REF[-1].item(), 0.0), "a probability, not a KL"),
    ((GREEDY_KL / math.log(10), 0.0), "base 10"),
    ((math.log(5), 0.0), "uniform"),
    ((-math.log(REF.max().item()), 0.0), "highest *reward*"),
    ((math.inf, 0.0), "stays finite"),
    ((GREEDY_KL, 1.0), "beta -> infinity"),
    ((GREEDY_KL,), "expected two numbers"),
])
def test_kl_limits_names_each_slip_without_the_answer(capsys, limits, hint):
    result, out = _verdict(capsys, ex.check_02_kl_limits, limits, REF, REWARDS)
    assert result is False and hint in out, out
    assert f"{GREEDY_KL:.4f}" not in out and f"{GREEDY_KL:.3f}" not in out, out


def test_kl_formula_accepts_the_derivation(capsys):
    result, out = _verdict(capsys, ex.check_02_kl_formula, lambda reward, log_z, beta: reward / beta - log_z)
    assert result is True and "correct" in out


def test_kl_formula_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_02_kl_formula, _not_attempted)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("kl_of, hint", [
    (lambda r, z, b: r / b + z, "a sign"),
    (lambda r, z, b: z - r / b, "minus the KL"),
    (lambda r, z, b: r - b * z, "beta times the KL"),
    (lambda r, z, b: r / b, "log Z is missing"),
    (lambda r, z, b: (r - z) / b, "divided by beta too"),
    (lambda r, z, b: r - z, "beta looks missing"),
    (lambda r, z, b: (r / b - z).mean(), "one value per row"),
])
def test_kl_formula_names_each_slip_without_the_answer(capsys, kl_of, hint):
    result, out = _verdict(capsys, ex.check_02_kl_formula, kl_of)
    assert result is False and hint in out, out
    assert "r / beta - log Z" not in out and "r/beta - log Z" not in out, out
