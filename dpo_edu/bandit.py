"""Tabular policies over a finite set of responses, where everything has a closed form."""
from __future__ import annotations

import torch


def optimal_policy(ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The maximiser of E_pi[r] - beta KL(pi || pi_ref): pi* = pi_ref exp(r / beta) / Z.

    ref_probs, rewards: (..., K) over K responses (ref_probs sum to 1 on the last axis).
    Returns (..., K). Computed as softmax(log pi_ref + r / beta), so Z never overflows.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ref_probs = torch.as_tensor(ref_probs)
    rewards = torch.as_tensor(rewards, dtype=ref_probs.dtype)
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def kl_regularised_objective(policy_probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """E_pi[r] - beta KL(pi || pi_ref) on the last axis; shapes (..., K) -> (...)."""
    expected_reward = (policy_probs * rewards).sum(-1)
    kl = (policy_probs * (torch.log(policy_probs) - torch.log(ref_probs))).sum(-1)
    return expected_reward - beta * kl
