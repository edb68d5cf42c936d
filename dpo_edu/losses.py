"""The DPO loss and its variants: one registry, one entry point, one place that checks the settings.

Every variant scores a pair from four sequence log-probs (sums over the
response tokens). With the log-ratios rho_w = log pi(y_w) - log pi_ref(y_w),
rho_l likewise, and h = rho_w - rho_l, each differs from DPO in one line:

| loss_type | paper | the line that differs from DPO |
|---|---|---|
| sigmoid  | DPO, Rafailov et al. 2023      | -log sigma(beta h)                                           |
|  + label_smoothing eps | cDPO, Mitchell 2023 | -(1-eps) log sigma(beta h) - eps log sigma(-beta h)   |
|  + offset Delta | ODPO, Amini et al. 2024 | -log sigma(beta h - Delta)                                |
|  + sft_weight w | RPO, Pang et al. 2024   | ... + w * NLL(y_w)                                           |
| robust   | rDPO, Chowdhury et al. 2024    | (-(1-eps) log sigma(beta h) + eps log sigma(-beta h)) / (1-2eps) |
| ipo      | IPO, Azar et al. 2023          | (h_avg - 1/(2 beta))^2, log-ratios divided by length         |
| hinge    | RSO, Liu et al. 2023           | max(0, 1 - beta h)                                           |
| simpo    | SimPO, Meng et al. 2024        | -log sigma(beta (logp_w/|y_w| - logp_l/|y_l|) - gamma), no reference |
| orpo     | ORPO, Hong et al. 2024         | NLL(y_w) - beta log sigma(log odds_w - log odds_l), no reference |

Conventions follow TRL 1.x where TRL has the variant (tests/test_trl_parity.py):
IPO divides each log-ratio by its response length (TRL's convention; Azar et
al. 2023 write IPO with whole-sequence log-ratios, which is what lengths None
gives: every length 1, as in the bandit); the NLL term is TRL's "sft" loss, the mean over every chosen token
of the batch. cDPO (sigmoid + label_smoothing) is TRL < 0.29's smoothing;
TRL 1.x dropped it and keeps the unbiased "robust" form.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = frozenset({"simpo", "orpo"})  # scored without pi_ref: the trainer skips the reference pass
SMOOTHED = frozenset({"sigmoid", "robust"})  # the types that read label_smoothing


def check_loss_settings(
    loss_type: str,
    beta: float,
    *,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    simpo_gamma: float = 0.5,
    offset: bool = False,
) -> list[str]:
    """Every problem with these loss settings, in words (an empty list: none). TrainConfig and dpo_loss both ask here."""
    known = loss_type in LOSS_TYPES
    problems = [] if known else [f"unknown loss_type {loss_type!r} (known: {', '.join(LOSS_TYPES)})"]
    if not beta > 0:
        problems.append(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        problems.append(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    elif label_smoothing and known and loss_type not in SMOOTHED:
        problems.append(
            f"label_smoothing applies to loss_type 'sigmoid' (cDPO) or 'robust' only, not {loss_type!r}; set it to 0"
        )
    if not sft_weight >= 0:
        problems.append(f"sft_weight must be >= 0, got {sft_weight}")
    if not simpo_gamma >= 0:
        problems.append(f"simpo_gamma must be >= 0, got {simpo_gamma}")
    if offset and known and loss_type != "sigmoid":
        problems.append(
            f"an ODPO offset (odpo_alpha) needs loss_type 'sigmoid' (the offset sits inside the sigmoid), not {loss_type!r}"
        )
    return problems


# Each variant: per-pair losses (B,) from the log-ratios (or, reference-free, the length-averaged log-probs).
def _sigmoid(pair: dict, beta: float, label_smoothing: float, offset, **_) -> torch.Tensor:
    z = beta * pair["h"] - (0 if offset is None else offset)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _robust(pair: dict, beta: float, label_smoothing: float, **_) -> torch.Tensor:
    z = beta * pair["h"]  # unbiased under labels flipped with probability eps
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


def _ipo(pair: dict, beta: float, **_) -> torch.Tensor:
    h_avg = pair["chosen_logratios"] / pair["chosen_lengths"] - pair["rejected_logratios"] / pair["rejected_lengths"]
    return (h_avg - 1 / (2 * beta)) ** 2


def _hinge(pair: dict, beta: float, **_) -> torch.Tensor:
    return torch.relu(1 - beta * pair["h"])


def _simpo(pair: dict, beta: float, simpo_gamma: float, **_) -> torch.Tensor:
    return -F.logsigmoid(beta * (pair["chosen_avg_logps"] - pair["rejected_avg_logps"]) - simpo_gamma)


def _log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) with p = exp(avg_logps) < 1, the length-averaged sequence probability."""
    return avg_logps - torch.log1p(-torch.exp(avg_logps))


def _orpo(pair: dict, beta: float, **_) -> torch.Tensor:
    odds_ratio_term = -F.logsigmoid(_log_odds(pair["chosen_avg_logps"]) - _log_odds(pair["rejected_avg_logps"]))
    return beta * odds_ratio_term + pair["chosen_nll"]  # ORPO's NLL is part of the loss itself


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "robust": _robust,
    "ipo": _ipo,
    "hinge": _hinge,
    "simpo": _simpo,
    "orpo": _orpo,
}
assert tuple(LOSSES) == LOSS_TYPES


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    *,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    offset: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    sft_weight: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards for any variant in LOSS_TYPES.

    Log-prob tensors: (B,) sequence log-probs (sums over response tokens); the
    reference ones may be None only for REFERENCE_FREE types (and are ignored there).
    offset: (B,) ODPO's Delta or None (sigmoid only).
    chosen_lengths, rejected_lengths: (B,) response tokens per sequence, or None
        for 1 each (one-token responses, as in the bandit). IPO, SimPO, ORPO and
        the NLL term read them.
    sft_weight: w > 0 adds w * NLL(chosen) to every pair's loss (RPO), NLL being
        the mean negative log-prob over all chosen tokens of the batch.
    Returns (losses, chosen_rewards, rejected_rewards), each (B,); take
    `losses.mean()` to train. The rewards are for logging (detached):
    beta * (log pi - log pi_ref), or beta * log pi / length without a reference.
    """
    problems = check_loss_settings(
        loss_type,
        beta,
        label_smoothing=label_smoothing,
        sft_weight=sft_weight,
        simpo_gamma=simpo_gamma,
        offset=offset is not None,
    )
    if problems:
        raise ValueError("; ".join(problems))
    reference_free = loss_type in REFERENCE_FREE
    if not reference_free and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(
            f"loss_type {loss_type!r} needs ref_chosen_logps and ref_rejected_logps (only {', '.join(sorted(REFERENCE_FREE))} go without)"
        )
    shape = policy_chosen_logps.shape
    ones = torch.ones(shape, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device)
    named = {
        "policy_rejected_logps": policy_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }
    if not reference_free:
        named.update(ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} like policy_chosen_logps"
            )
    chosen_lengths = ones if chosen_lengths is None else chosen_lengths.to(ones)
    rejected_lengths = ones if rejected_lengths is None else rejected_lengths.to(ones)

    pair = {
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
        "chosen_avg_logps": policy_chosen_logps / chosen_lengths,
        "rejected_avg_logps": policy_rejected_logps / rejected_lengths,
        # TRL's "sft" term: one number per batch (the mean over its chosen tokens), the same for every pair
        "chosen_nll": (-policy_chosen_logps.sum() / chosen_lengths.sum()).expand(shape),
    }
    if not reference_free:
        pair["chosen_logratios"] = policy_chosen_logps - ref_chosen_logps
        pair["rejected_logratios"] = policy_rejected_logps - ref_rejected_logps
        pair["h"] = pair["chosen_logratios"] - pair["rejected_logratios"]
    if offset is not None:
        offset = torch.as_tensor(offset, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device)
    losses = LOSSES[loss_type](pair, beta, label_smoothing=label_smoothing, offset=offset, simpo_gamma=simpo_gamma)
    if sft_weight:
        losses = losses + sft_weight * pair["chosen_nll"]

    if reference_free:
        chosen_rewards, rejected_rewards = beta * pair["chosen_avg_logps"], beta * pair["rejected_avg_logps"]
    else:
        chosen_rewards, rejected_rewards = beta * pair["chosen_logratios"], beta * pair["rejected_logratios"]
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def odpo_offset(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    alpha: float = 1.0,
    *,
    min_gap: float = 1e-3,
    scale: float = 1.0,
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
