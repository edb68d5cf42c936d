"""Checkers for notebook 07 (ODPO) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import losses
from ._checking import (
    _call,
    _close,
    _extreme_margin_logps,
    _first_matching_slip,
    _NotAttempted,
    _random_logps,
    _tensor,
    _verdict,
    _Wrong,
)

# ---------------------------------------------------------------- 07 ODPO


def check_07_odpo_loss(odpo: Callable[..., torch.Tensor]) -> bool:
    """odpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, offset) -> per-pair ODPO losses (B,),
    finite for margins of +-1000 in float32."""

    def body() -> str:
        logps = _random_logps(0)
        offset = torch.randn(logps[0].shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
        expected = losses.dpo_loss(*logps, 0.1, offset=offset)[0]
        got = _tensor(
            _call(odpo, *(logp.clone() for logp in logps), 0.1, offset.clone()), expected, "ODPO losses at beta=0.1"
        )
        margin = losses.dpo_loss(*logps, 1.0)[1] - losses.dpo_loss(*logps, 1.0)[2]
        slip = _first_matching_slip(
            got,
            {
                "the offset looks like it sits outside the log-sigmoid, where it is a constant that no gradient sees": -F.logsigmoid(
                    0.1 * margin
                )
                - offset,
                "the offset's sign looks flipped: a larger offset must make the pair harder to win, so its loss must rise": -F.logsigmoid(
                    0.1 * margin + offset
                ),
                "the offset looks unused: these are plain DPO losses": -F.logsigmoid(0.1 * margin),
                "the offset looks multiplied by beta; it enters the margin unscaled": -F.logsigmoid(
                    0.1 * (margin - offset)
                ),
            },
        )
        if slip:
            raise _Wrong(slip)
        for seed in (0, 1):
            logps = _random_logps(seed)
            offset = torch.randn(
                logps[0].shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64
            )
            for beta in (0.1, 1.0):
                expected = losses.dpo_loss(*logps, beta, offset=offset)[0]
                _close(
                    _call(odpo, *(logp.clone() for logp in logps), beta, offset.clone()),
                    expected,
                    f"ODPO loss at beta={beta}",
                )
        extreme = _extreme_margin_logps()
        extreme_offset = torch.tensor([0.5, -0.5, 2.0, -2.0])
        _close(
            _call(odpo, *(logp.clone() for logp in extreme), 1.0, extreme_offset.clone()),
            losses.dpo_loss(*extreme, 1.0, offset=extreme_offset)[0],
            "ODPO losses at margins of +-120 and +-1000 in float32",
            atol=1e-4,
            rtol=1e-6,
        )
        return "-log sigmoid(beta * h - offset): the offset inside the sigmoid, finite at any margin"

    return _verdict("ODPO loss", body)


# ---------------------------------------------------------------- 07 §2: the first step's weights (derive)


def check_07_start_weights(weights: dict | None, chosen_scores, rejected_scores, alpha: float) -> bool | None:
    """weights: {"strong": w, "weak": w}, each pair's gradient weight on its margin at the first step (policy =
    reference, every log-ratio 0) under ODPO, for section 1's two pairs: -d loss / d(beta h) at h = 0."""

    def body() -> str:
        if weights is None or (isinstance(weights, dict) and all(v is None for v in weights.values())):
            raise _NotAttempted
        if not isinstance(weights, dict) or sorted(weights) != ["strong", "weak"]:
            raise _Wrong("expected a dict with the keys 'strong' and 'weak'")
        offsets = losses.odpo_offset(torch.as_tensor(chosen_scores), torch.as_tensor(rejected_scores), alpha)
        truth = dict(zip(("strong", "weak"), torch.sigmoid(offsets).tolist()))
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Wrong(f"{name}: answer a number")
            if abs(value - 0.5) < 1e-3:
                raise _Wrong(
                    f"{name}: 1/2 is DPO's weight at the first step; ODPO's loss is -log sigmoid(beta h - "
                    "offset): differentiate it at h = 0"
                )
            if abs(value - (1 - truth[name])) < 1e-3:
                raise _Wrong(
                    f"{name}: the sign of the offset is flipped: -d/dx log sigmoid(x - offset) = sigmoid(offset - x)"
                )
            if abs(value - truth[name]) > 1e-3:
                raise _Wrong(
                    f"{name}: the weight is sigmoid(offset - beta h) at h = 0, with offset = alpha * log(s_w - s_l)"
                )
        return (
            f"sigmoid(offset): {truth['strong']:.3f} for the strong pair and {truth['weak']:.3f} for the weak "
            "one, against DPO's 0.5 for both"
        )

    return _verdict("first-step weights", body)


# ---------------------------------------------------------------- 07 §5: ODPO's KL against DPO's (predict)


def _kl_direction_truth(summary: dict) -> str:
    """ "more", "less" or "mixed": the sign of ODPO's final KL minus DPO's at the same beta (seed means), across
    the sweep's betas."""
    differences = [
        b["kl"] for row in summary["odpo_minus_dpo"] if row["setting"] == "all pairs" for b in row["by_beta"]
    ]
    if differences and all(d > 0 for d in differences):
        return "more"
    if differences and all(d < 0 for d in differences):
        return "less"
    return "mixed"


def check_07_kl_direction(prediction: str | None, summary: dict) -> bool | None:
    """prediction: "more", "less" or "mixed": does ODPO end further from the reference (more KL) than DPO at the
    same beta, at every beta of the sweep? The truth is read from the sweep's summary once answered."""

    def body() -> str:
        if prediction is None:
            raise _NotAttempted
        if prediction not in ("more", "less", "mixed"):
            raise _Wrong("answer 'more', 'less' or 'mixed'")
        truth = _kl_direction_truth(summary)
        if prediction != truth:
            raise _Wrong(
                "not in this sweep: the offsets here are all positive, so each pair must be won by a "
                "margin; read the per-beta KL differences below"
            )
        return "as this sweep measured"

    return _verdict("ODPO's KL against DPO's", body)


check_07_kl_direction.truth = _kl_direction_truth
