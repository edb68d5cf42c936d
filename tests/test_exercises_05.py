"""Notebook 05's and 05b's checkers: the right answer passes, a stub is "not attempted", and the typical wrong answers
are rejected with a hint that names the mistake without giving the answer. Where a checker's truth is a closed form,
the closed form is checked here against training (train_tabular_dpo)."""
import math

import pytest
import torch

from dpo_edu import bandit, exercises
from dpo_edu.exercises import nb05


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def _stub(*args):
    raise NotImplementedError


def _rejected(capsys, checker, answer, hint, *, leaks=()):
    """The answer is wrong, the line names `hint`, and gives none of `leaks` away."""
    result, out = _verdict(capsys, checker, *answer)
    assert result is False and "wrong" in out and hint in out, out
    for leak in leaks:
        assert leak not in out, (leak, out)


# ----------------------------------------------------------------------------- 05, exercise 1 (derive)

def _two_response_limit(ref_a, p, beta):
    ratio = ref_a / (1 - ref_a) * (p / (1 - p)) ** (1 / beta)
    return ratio / (1 + ratio)


@pytest.mark.parametrize("ref_a, p, beta", [(0.3, 0.8, 0.5), (0.7, 0.35, 2.0)])
def test_two_response_limit_is_where_dpo_training_lands(ref_a, p, beta):
    ref = torch.tensor([[ref_a, 1 - ref_a]], dtype=torch.float64)
    pairs = torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), torch.tensor([1, 0])  # A beats B, B beats A
    weights = torch.tensor([p, 1 - p], dtype=torch.float64)
    policy, _ = bandit.train_tabular_dpo(ref, *pairs, beta, steps=3000, learning_rate=0.05, record_every=3000,
                                         weights=weights)
    assert policy[0, 0].item() == pytest.approx(_two_response_limit(ref_a, p, beta), abs=1e-6)
    assert nb05._05_two_response_limit(ref_a, p, beta) == pytest.approx(_two_response_limit(ref_a, p, beta))


def test_two_response_limit_right_and_not_attempted(capsys):
    result, out = _verdict(capsys, exercises.check_05_two_response_limit, _two_response_limit)
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_05_two_response_limit, _stub)
    assert result is None and "not attempted" in out


def test_two_response_limit_rejects_slips(capsys):
    def probability(ratio, ref_a):
        return 1 / (1 + (1 - ref_a) / ref_a / ratio)

    slips = {
        "beta is missing": lambda a, p, b: probability(p / (1 - p), a),
        "beta acts the wrong way round": lambda a, p, b: probability((p / (1 - p)) ** b, a),
        "pi_ref is missing": lambda a, p, b: probability((p / (1 - p)) ** (1 / b), 0.5),
        "looks like the ratio": lambda a, p, b: a / (1 - a) * (p / (1 - p)) ** (1 / b),
        "favours the response that loses": lambda a, p, b: probability(((1 - p) / p) ** (1 / b), a),
        "win rate p as A's reward": lambda a, p, b: probability(math.exp((2 * p - 1) / b), a),
        "outside [0, 1]": lambda a, p, b: -_two_response_limit(a, p, b),
        "your pi(A) is too": lambda a, p, b: _two_response_limit(a, p, b) * 0.9,
    }
    for hint, slip in slips.items():
        _rejected(capsys, exercises.check_05_two_response_limit, (slip,), hint, leaks=["(p/(1-p))^(1/beta)"])


# ----------------------------------------------------------------------------- 05, exercise 2 (diagnose)

def test_silent_bugs_truth_is_what_training_finds():
    passing = nb05._05_bugs_passing()
    assert passing[1.0] == {"a", "b", "c"}
    assert frozenset.intersection(*passing.values()) == {"a"}


def test_silent_bugs_right_and_not_attempted(capsys):
    result, out = _verdict(capsys, exercises.check_05_silent_bugs, {"a", "b", "c"}, {"a"})
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_05_silent_bugs, "a, b, c", ["A"])  # letters in any container
    assert result is True
    result, out = _verdict(capsys, exercises.check_05_silent_bugs, None, None)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("one, three, hint", [
    ({"a"}, {"a"}, "at least one slip you left out passes"),  # missed the beta = 1 coincidences
    ({"a", "b", "c", "f"}, {"a"}, "at least one slip in your set fails"),  # f starts at N ln 2
    ({"a", "b", "c"}, {"a", "b", "c"}, "at beta = 0.3, 1 and 3, at least one slip in your set fails"),
    ({"a", "d", "e"}, {"a"}, "at least one slip in your set fails"),  # d and e start at ln 2 but miss pi*
    ({"a"}, {"a", "b"}, "not inside the first"),
    ({"a", "b", "c"}, None, "answer both"),
    ({"a", "z"}, {"a"}, "unknown label"),
    (3, {"a"}, "expected a set"),
])
def test_silent_bugs_rejects_wrong_sets(capsys, one, three, hint):
    _rejected(capsys, exercises.check_05_silent_bugs, (one, three), hint, leaks=["only a survives"])


# ---------------------------------------------------------------------------- 05b, exercise 1 (derive)

def _neighbours(ref, beta):
    return torch.softmax(torch.log(ref) + torch.arange(len(ref), dtype=ref.dtype) / (2 * beta), -1)


@pytest.mark.parametrize("n_responses, beta", [(3, 0.5), (4, 0.25)])
def test_ipo_neighbours_limit_is_where_ipo_training_lands(n_responses, beta):
    generator = torch.Generator().manual_seed(1)
    ref = torch.softmax(torch.randn(1, n_responses, generator=generator, dtype=torch.float64), -1)
    worse = torch.arange(n_responses - 1)
    prompts = torch.zeros_like(worse)
    policy, _ = bandit.train_tabular_dpo(ref, prompts, worse + 1, worse, beta, loss_type="ipo", steps=3000,
                                         learning_rate=0.05, record_every=3000)
    # Adam wobbles a little around a zero-loss minimum (notebook 05b, section 6): 1e-4 still tells every slip apart
    torch.testing.assert_close(policy[0], nb05._05b_neighbour_limit(ref[0], beta), rtol=0, atol=1e-4)


def test_ipo_neighbours_right_and_not_attempted(capsys):
    result, out = _verdict(capsys, exercises.check_05b_ipo_neighbours, _neighbours)
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_05b_ipo_neighbours, _stub)
    assert result is None and "not attempted" in out


def test_ipo_neighbours_rejects_slips(capsys):
    def spaced(spacing, sign=1.0, use_ref=True):
        def policy(ref, beta):
            climb = sign * spacing(beta, len(ref)) * torch.arange(len(ref), dtype=ref.dtype)
            return torch.softmax((torch.log(ref) if use_ref else 0) + climb, -1)
        return policy

    slips = {
        "every pair is compared equally often": spaced(lambda b, k: 1 / (b * k)),
        "off by a factor": spaced(lambda b, k: 1 / b),
        "pi_ref is missing": spaced(lambda b, k: 1 / (2 * b), use_ref=False),
        "the direction is reversed": spaced(lambda b, k: 1 / (2 * b), sign=-1.0),
        "that is DPO's limit": lambda ref, beta: torch.nn.functional.one_hot(torch.tensor(len(ref) - 1),
                                                                             len(ref)).double(),
        "sums to": lambda ref, beta: torch.log(ref) + torch.arange(len(ref)) / (2 * beta),  # log-probs, not probs
        "not IPO's minimum": spaced(lambda b, k: 2 / (3 * b)),
        "shape": lambda ref, beta: _neighbours(ref, beta)[:-1],
    }
    for hint, slip in slips.items():
        _rejected(capsys, exercises.check_05b_ipo_neighbours, (slip,), hint, leaks=["exp(y/(2 beta))"])


# ---------------------------------------------------------------------------- 05b, exercise 2 (predict)

def test_uncovered_response_right_and_not_attempted(capsys):
    def right(policy, k, shift):
        raised = policy[k] * math.exp(shift)
        return (raised / (1 - policy[k] + raised)).item()

    result, out = _verdict(capsys, exercises.check_05_uncovered_response, right)
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_05_uncovered_response, _stub)
    assert result is None and "not attempted" in out


def test_uncovered_response_rejects_slips(capsys):
    def renormalised(policy, k, shift):
        raised = policy[k] * math.exp(shift)
        return (raised / (1 - policy[k] + raised)).item()

    slips = {
        "you predicted no change": lambda policy, k, shift: policy[k].item(),
        "must make room": lambda policy, k, shift: (policy[k] * math.exp(shift)).item(),
        "your prediction is too": lambda policy, k, shift: renormalised(policy, k, -shift),  # the shift's sign
        "your prediction is": lambda policy, k, shift: (policy[k] + shift / 10).item(),  # moved, but not as a logit
        "expected one number": lambda policy, k, shift: policy,
    }
    for hint, slip in slips.items():
        _rejected(capsys, exercises.check_05_uncovered_response, (slip,), hint, leaks=["normaliser make it"])


# ---------------------------------------------------------------------------- 05b, exercise 3 (derive)

def test_frontier_slope_right_and_not_attempted(capsys):
    result, out = _verdict(capsys, exercises.check_05b_frontier_slope, lambda beta: beta)
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_05b_frontier_slope, _stub)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("slip, hint", [
    (lambda beta: -beta, "does more KL buy more reward"),
    (lambda beta: 1 / beta, "upside down"),
    (lambda beta: 2 * beta, "constant factor"),
    (lambda beta: beta / 2, "constant factor"),
    (lambda beta: 1.0, "too steep"),  # right at beta = 1 only
    (lambda beta: beta ** 2, "too flat"),
])
def test_frontier_slope_rejects_slips(capsys, slip, hint):
    _rejected(capsys, exercises.check_05b_frontier_slope, (slip,), hint, leaks=["is beta itself"])
