"""Checkers for notebook 01 (Bradley-Terry) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import bradley_terry
from ._checking import (
    _call,
    _close,
    _first_matching_slip,
    _NotAttempted,
    _number,
    _tensor,
    _verdict,
    _Wrong,
)

# ------------------------------------- 01 Bradley-Terry: predict the naive ratio's nan


def _naive_nan_fraction(reward_scale: float, samples: int = 1 << 20) -> dict[str, float]:
    """Fractions of float32 reward pairs scale * N(0, 1) where the naive ratio exp(r_w) / (exp(r_w) + exp(r_l)) is
    nan, and where the typical wrong accounts of it would put it; computed on the checker's own draw."""
    generator = torch.Generator().manual_seed(11)
    chosen, rejected = (reward_scale * torch.randn(samples, generator=generator) for _ in range(2))
    exp_chosen, exp_rejected = chosen.exp(), rejected.exp()
    naive = exp_chosen / (exp_chosen + exp_rejected)
    return {
        "right": naive.isnan().float().mean().item(),
        "either overflows": (exp_chosen.isinf() | exp_rejected.isinf()).float().mean().item(),
        "both overflow": (exp_chosen.isinf() & exp_rejected.isinf()).float().mean().item(),
    }


def check_01_nan_count(nan_count: float, n_comparisons: int, reward_scale: float = 100.0) -> bool:
    """nan_count: the predicted number of the n_comparisons float32 pairs, rewards reward_scale * N(0, 1), for which
    the naive ratio exp(r_w) / (exp(r_w) + exp(r_l)) is nan. The truth is the expected count, from the checker's own
    draw of a million pairs; a prediction within 20 % of it (or 3 pairs) passes."""

    def body() -> str:
        if nan_count is None:
            raise _NotAttempted
        got = _number(nan_count, "predicted count")
        fractions = _naive_nan_fraction(reward_scale)
        expected = n_comparisons * fractions["right"]
        if abs(got - expected) <= max(0.2 * expected, 3.0):
            return (
                f"about {expected:.0f} expected: exp overflows float32 above r = 88.7, and inf / (inf + anything) "
                "is nan, while an overflowing rejected reward alone gives 0; both rewards below -104 (exp = 0) "
                "add a few 0 / 0"
            )
        if 0 < got < 1:
            raise _Wrong("that looks like a fraction; give the count among the n_comparisons pairs")
        if abs(got - 100 * fractions["right"]) <= 0.2 * 100 * fractions["right"] and expected > 150:
            raise _Wrong("that looks like a percentage; give the count among the n_comparisons pairs")
        either = n_comparisons * fractions["either overflows"]
        if abs(got - either) <= 0.1 * either:
            raise _Wrong("too many: when only the rejected reward overflows, the ratio is finite / inf = 0, not nan")
        if got > expected:
            raise _Wrong("too many: which pairs make the ratio nan (inf / inf or 0 / 0), and which only 0 or 1?")
        if abs(got - n_comparisons * fractions["both overflow"]) <= 0.2 * n_comparisons * fractions["both overflow"]:
            raise _Wrong("too few: inf / (inf + anything) is nan already, whatever the rejected reward")
        if got < 1:
            raise _Wrong(
                "no nan at all? these rewards are float32, whose exp overflows far inside their spread "
                "(section 2: past e^88.7)"
            )
        raise _Wrong(
            "too few: how likely is a reward of scale * N(0, 1) to pass float32's exp limit of 88.7, "
            "and which pairs does that make nan?"
        )

    return _verdict("naive ratio's nan", body)


# ----------------------------------------- 01 Bradley-Terry: derive the gradient


def _autograd_score_gradient(scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    scores = scores.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(bradley_terry.log_likelihood(scores, winners, losers), scores)
    return gradient


def _score_gradient_slips(scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> dict[str, torch.Tensor]:
    """Typical wrong gradients of log L, each with the hint that names its mistake."""
    right = _autograd_score_gradient(scores, winners, losers)
    weight = torch.sigmoid(scores[losers] - scores[winners])  # d log sigmoid(s_w - s_l) / d s_w
    winners_only = torch.zeros_like(scores).index_add(0, winners, weight)
    win_probability = torch.sigmoid(scores[winners] - scores[losers])
    overwritten = torch.zeros_like(scores)
    overwritten[winners] += weight  # a fancy-index += keeps one game per item
    overwritten[losers] -= weight
    return {
        "that is the gradient of the negative log-likelihood (the loss), which points the other way": -right,
        "only the games an item won: the games it lost move its score too": winners_only,
        "your weight per game is the probability that the winner wins; differentiate log sigmoid(z) once more": torch.zeros_like(
            scores
        )
        .index_add(0, winners, win_probability)
        .index_add(0, losers, -win_probability),
        "that looks averaged over games; log L is their sum": right / len(winners),
        "winners and losers look swapped": _autograd_score_gradient(scores, losers, winners),
        "an item that plays several games gets only one of them: `grad[winners] += g` does not add up repeated "
        "indices; use index_add_ (or torch.bincount with weights)": overwritten,
    }


def check_01_score_gradient(gradient: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """gradient(scores (n_items,), winners (N,), losers (N,)) -> (n_items,): d log L / d scores, derived by hand
    (log L = sum_i log sigmoid(s_w_i - s_l_i)); compared with autograd on tournaments with repeated games."""

    def body() -> str:
        generator = torch.Generator().manual_seed(3)
        scores = torch.randn(6, generator=generator, dtype=torch.float64)
        winners, losers = bradley_terry.simulate_comparisons(scores, 60, generator=generator)
        expected = _autograd_score_gradient(scores, winners, losers)
        got = _tensor(_call(gradient, scores.clone(), winners.clone(), losers.clone()), expected, "gradient")
        slip = _first_matching_slip(got, _score_gradient_slips(scores, winners, losers))
        if slip:
            raise _Wrong(slip)
        _close(got, expected, "gradient of log L", atol=1e-8)
        # gaps of +-60, and an item (5) that plays no game
        wide = torch.tensor([0.0, 60.0, -60.0, 30.0, 1.0, 2.0], dtype=torch.float64)
        wide_winners, wide_losers = torch.tensor([2, 0, 1, 3, 3, 4]), torch.tensor([1, 2, 0, 4, 2, 0])
        _close(
            _call(gradient, wide.clone(), wide_winners, wide_losers),
            _autograd_score_gradient(wide, wide_winners, wide_losers),
            "gradient of log L for score gaps of 60, with an item that plays no game",
            atol=1e-8,
        )
        return (
            "d log L / d s_k = (games k won) - (games k was expected to win under s): at the maximum-likelihood "
            "scores every item wins exactly as often as its scores predict"
        )

    return _verdict("gradient of the Bradley-Terry log-likelihood", body)
