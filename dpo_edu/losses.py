"""The DPO loss and its variants, with the same conventions as TRL's DPOTrainer.

With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)):

- "sigmoid" (DPO):  -log sigmoid(beta * h - offset)
  with label_smoothing eps (cDPO): -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)
- "ipo":            (h - 1 / (2 beta))^2
- "hinge":          max(0, 1 - beta * h)

The offset (ODPO) sits inside the sigmoid: a pair whose ground-truth gap is large
must win by a larger margin before it stops contributing gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    *,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards.

    All four log-prob tensors: (B,) sequence log-probs (sums over response tokens).
    offset: (B,) or None, ODPO's Delta; only with loss_type="sigmoid".
    Returns (losses, chosen_rewards, rejected_rewards), each (B,). The rewards are
    beta * (log pi - log pi_ref), detached: they are for logging, not for gradients.
    Take `losses.mean()` to train.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}")
    if offset is not None and loss_type != "sigmoid":
        raise ValueError(f"offset (ODPO) applies to loss_type='sigmoid' only, not {loss_type!r}")
    shape = policy_chosen_logps.shape
    for name, tensor in (
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} like policy_chosen_logps")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios  # h above, (B,)

    if loss_type == "sigmoid":
        z = beta * logits
        if offset is not None:
            z = z - torch.as_tensor(offset, dtype=z.dtype, device=z.device)
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * logits)

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def odpo_offset(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, alpha: float = 1.0, *, min_gap: float = 1e-3, scale: float = 1.0
) -> torch.Tensor:
    """ODPO's offset Delta = alpha * log(scale * (s_w - s_l)), shape (B,).

    `scale` sets the scores' unit: log is negative below 1, so a gap smaller than
    1 / scale gets a negative offset, which *relaxes* DPO on that pair. VADER's
    scores lie in [-1, 1] (gaps in (0, 2]): with scale = 1 most pairs would be
    relaxed, and the ODPO paper's classifier logits have gaps mostly above 1.

    Ties: log(0) = -inf must never reach the loss, so gaps below `min_gap` are
    raised to `min_gap`. A tie then gets the most negative offset the rule
    allows, alpha * log(min_gap) (about -6.9 alpha): the pair is already
    "won" at h = 0 and pushes the policy only weakly, which is what a pair with
    no real preference should do. A negative gap (chosen scored below
    rejected) is a data error and raises ValueError naming the first bad row.
    """
    chosen_scores = torch.as_tensor(chosen_scores, dtype=torch.float32)
    rejected_scores = torch.as_tensor(rejected_scores, dtype=torch.float32)
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not min_gap > 0:
        raise ValueError(f"min_gap must be > 0, got {min_gap}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    gap = chosen_scores - rejected_scores
    bad = ~torch.isfinite(gap) | (gap < 0)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"row {row}: chosen_score {float(chosen_scores.reshape(-1)[row])} must be finite and >= "
            f"rejected_score {float(rejected_scores.reshape(-1)[row])} for an ODPO offset"
        )
    return alpha * torch.log(scale * gap.clamp_min(min_gap))
