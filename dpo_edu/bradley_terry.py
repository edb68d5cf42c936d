"""The Bradley-Terry model: from pairwise preferences to scores.

P(w beats l) = exp(r_w) / (exp(r_w) + exp(r_l)) = sigmoid(r_w - r_l).
Only differences of scores matter, so fitted scores are returned centred (mean 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_probability(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """P(chosen beats rejected) = sigmoid(reward_chosen - reward_rejected).

    Shapes: any two broadcastable tensors; the result has their broadcast shape.
    Written as a sigmoid of the difference, not a ratio of exponentials, so that
    large rewards (say 1000 vs 999) do not overflow.
    """
    return torch.sigmoid(torch.as_tensor(reward_chosen) - torch.as_tensor(reward_rejected))


def log_likelihood(scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    """Sum over comparisons of log P(winner beats loser).

    scores: (n_items,) float; winners, losers: (N,) long item indices. Returns a scalar.
    """
    return F.logsigmoid(scores[winners] - scores[losers]).sum()


def reward_model_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """The reward-model loss: mean over pairs of -log sigmoid(r_chosen - r_rejected).

    reward_chosen, reward_rejected: (B,). Returns a scalar. This is the negative
    log-likelihood of Bradley-Terry, averaged (eq. 2 of the DPO paper).
    """
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


def simulate_comparisons(
    strengths: torch.Tensor, n_comparisons: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n_comparisons` random pairs of distinct items and let Bradley-Terry pick a winner.

    strengths: (n_items,) true scores. Returns (winners, losers), each (n_comparisons,) long.
    """
    n_items = strengths.shape[0]
    if n_items < 2:
        raise ValueError(f"need at least 2 items to compare, got {n_items}")
    first = torch.randint(n_items, (n_comparisons,), generator=generator)
    # a random non-zero shift makes the second item always differ from the first
    second = (first + torch.randint(1, n_items, (n_comparisons,), generator=generator)) % n_items
    first_wins = torch.rand(n_comparisons, generator=generator) < preference_probability(
        strengths[first], strengths[second]
    )
    winners = torch.where(first_wins, first, second)
    losers = torch.where(first_wins, second, first)
    return winners, losers


def fit_bradley_terry(
    winners: torch.Tensor,
    losers: torch.Tensor,
    n_items: int,
    *,
    l2: float = 1e-4,
    max_iter: int = 200,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """Maximum-likelihood Bradley-Terry scores, centred to mean 0.

    winners, losers: (N,) long item indices in [0, n_items). Returns (n_items,) float64.

    The likelihood is convex; L-BFGS with a strong-Wolfe line search finds its
    maximum. The penalty `l2 * sum(scores**2)` is added to the *summed*
    negative log-likelihood, so its pull is that of a fraction of a comparison
    and the fit is the maximum-likelihood one to about 1e-4; it is there only to
    keep the scores finite when an item never loses (or never wins), where the
    unpenalised maximum sits at infinity.
    """
    winners = torch.as_tensor(winners, dtype=torch.long)
    losers = torch.as_tensor(losers, dtype=torch.long)
    if winners.shape != losers.shape or winners.ndim != 1:
        raise ValueError(
            f"winners and losers must be 1-D and equal in shape, got {tuple(winners.shape)} and {tuple(losers.shape)}"
        )
    for name, index in (("winners", winners), ("losers", losers)):
        if index.numel() and (index.min() < 0 or index.max() >= n_items):
            raise ValueError(f"{name} holds an index outside [0, {n_items})")
    scores = torch.zeros(n_items, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [scores],
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=tolerance**2,
        line_search_fn="strong_wolfe",
    )
    n = max(winners.numel(), 1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # divide by n only to keep the numbers near 1 for the optimiser
        loss = (-log_likelihood(scores, winners, losers) + l2 * scores.pow(2).sum()) / n
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = scores.detach()
    return fitted - fitted.mean()
