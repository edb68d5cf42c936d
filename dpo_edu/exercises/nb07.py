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
        got = _tensor(_call(odpo, *(logp.clone() for logp in logps), 0.1, offset.clone()), expected, "ODPO losses at beta=0.1")
        margin = losses.dpo_loss(*logps, 1.0)[1] - losses.dpo_loss(*logps, 1.0)[2]
        slip = _first_matching_slip(got, {
            "the offset looks like it sits outside the log-sigmoid, where it is a constant that no gradient sees":
                -F.logsigmoid(0.1 * margin) - offset,
            "the offset's sign looks flipped: a larger offset must make the pair harder to win, so its loss must rise":
                -F.logsigmoid(0.1 * margin + offset),
            "the offset looks unused: these are plain DPO losses": -F.logsigmoid(0.1 * margin),
            "the offset looks multiplied by beta; it enters the margin unscaled": -F.logsigmoid(0.1 * (margin - offset)),
        })
        if slip:
            raise _Wrong(slip)
        for seed in (0, 1):
            logps = _random_logps(seed)
            offset = torch.randn(logps[0].shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
            for beta in (0.1, 1.0):
                expected = losses.dpo_loss(*logps, beta, offset=offset)[0]
                _close(_call(odpo, *(logp.clone() for logp in logps), beta, offset.clone()), expected, f"ODPO loss at beta={beta}")
        extreme = _extreme_margin_logps()
        extreme_offset = torch.tensor([0.5, -0.5, 2.0, -2.0])
        _close(_call(odpo, *(logp.clone() for logp in extreme), 1.0, extreme_offset.clone()),
               losses.dpo_loss(*extreme, 1.0, offset=extreme_offset)[0],
               "ODPO losses at margins of +-120 and +-1000 in float32", atol=1e-4, rtol=1e-6)
        return "-log sigmoid(beta * h - offset): the offset inside the sigmoid, finite at any margin"

    return _verdict("ODPO loss", body)


def check_07_offset(offset: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """offset(chosen_scores, rejected_scores, alpha) -> alpha * log(max(s_w - s_l, 1e-3)), finite for ties."""

    def body() -> str:
        chosen = torch.tensor([0.9, 0.5, 0.2, 0.3, -0.1])
        rejected = torch.tensor([-0.8, 0.4, 0.2, 0.2995, -0.6])  # a tie and a near-tie among them
        for alpha in (0.5, 1.0, 2.0):
            expected = losses.odpo_offset(chosen, rejected, alpha)
            got = _tensor(_call(offset, chosen.clone(), rejected.clone(), alpha), expected, f"offsets at alpha={alpha}")
            if not torch.isfinite(got).all():
                raise _Wrong("a tie gives inf or nan: the gap needs its floor of 1e-3 before the log")
            _close(got, expected, f"offsets at alpha={alpha} (ties: gap raised to 1e-3)", atol=1e-4)
        return "alpha * log of the score gap, with ties floored at a gap of 1e-3"

    return _verdict("ODPO offset", body)
