"""Tabular policies over a finite set of responses, where everything has a closed form."""
from __future__ import annotations

import torch


def optimal_policy(ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The maximiser of E_pi[r] - beta KL(pi || pi_ref): pi* = pi_ref exp(r / beta) / Z.

    ref_probs, rewards: (..., K) over K responses (ref_probs sum to 1 on the last axis).
    beta: a float, or a tensor that broadcasts against (..., 1), e.g. (n, 1) for n betas.
    Returns (..., K). Computed as softmax(log pi_ref + r / beta), so Z never overflows.
    """
    ref_probs = torch.as_tensor(ref_probs)
    rewards = torch.as_tensor(rewards, dtype=ref_probs.dtype)
    if not torch.as_tensor(beta).gt(0).all():
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def kl_regularised_objective(policy_probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """E_pi[r] - beta KL(pi || pi_ref) on the last axis; shapes (..., K) -> (...)."""
    expected_reward = (policy_probs * rewards).sum(-1)
    kl = (policy_probs * (torch.log(policy_probs) - torch.log(ref_probs))).sum(-1)
    return expected_reward - beta * kl


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 0.5 * sum |p - q| on the last axis; (..., K) -> (...)."""
    return 0.5 * (p - q).abs().sum(-1)


def sample_preferences(
    rewards: torch.Tensor,
    n_preferences: int,
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labelled pairs for P prompts with K responses each, preferences from Bradley-Terry on `rewards`.

    rewards: (P, K) true rewards. Each preference draws a prompt uniformly, two
    different responses uniformly (so every pair is covered), and the winner
    with P(a beats b) = sigmoid(r_a - r_b); with `deterministic`, the higher
    reward always wins (ties are never drawn: the two responses differ, and
    equal rewards are rejected).
    Returns (prompts, chosen, rejected), each (n_preferences,) long.
    """
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (P, K) with K >= 2, got {tuple(rewards.shape)}")
    n_prompts, n_responses = rewards.shape
    prompts = torch.randint(n_prompts, (n_preferences,), generator=generator)
    first = torch.randint(n_responses, (n_preferences,), generator=generator)
    second = (first + torch.randint(1, n_responses, (n_preferences,), generator=generator)) % n_responses
    gap = rewards[prompts, first] - rewards[prompts, second]
    if deterministic:
        if (gap == 0).any():
            raise ValueError("deterministic preferences need distinct rewards within each prompt")
        first_wins = gap > 0
    else:
        first_wins = torch.rand(n_preferences, generator=generator, dtype=gap.dtype) < torch.sigmoid(gap)
    chosen = torch.where(first_wins, first, second)
    rejected = torch.where(first_wins, second, first)
    return prompts, chosen, rejected


def train_tabular_dpo(
    ref_probs: torch.Tensor,
    prompts: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    beta: float,
    *,
    loss_type: str = "sigmoid",
    steps: int = 500,
    learning_rate: float = 0.1,
    target: torch.Tensor | None = None,
    record_every: int = 10,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """DPO (or IPO, hinge) on a tabular policy pi_theta = softmax(logits), full batch, Adam.

    ref_probs: (P, K); prompts, chosen, rejected: (N,) long. The logits start at
    log ref_probs, so step 0 is policy == reference (loss ln 2 for DPO).
    target: (P, K), e.g. pi*, to record the mean TV distance to it.
    Returns the final policy (P, K) and a history of
    {"step", "loss", "tv" (if target), "rejected_prob", "chosen_prob"} every `record_every` steps.
    """
    from .losses import dpo_loss

    ref_logps = torch.log(torch.as_tensor(ref_probs, dtype=torch.float64))
    logits = ref_logps.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=learning_rate)
    history: list[dict[str, float]] = []
    for step in range(steps + 1):
        policy_logps = torch.log_softmax(logits, dim=-1)
        losses, _, _ = dpo_loss(
            policy_logps[prompts, chosen],
            policy_logps[prompts, rejected],
            ref_logps[prompts, chosen],
            ref_logps[prompts, rejected],
            beta,
            loss_type=loss_type,
        )
        loss = losses.mean()
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                probs = policy_logps.exp()
                record = {
                    "step": step,
                    "loss": loss.item(),
                    "chosen_prob": probs[prompts, chosen].mean().item(),
                    "rejected_prob": probs[prompts, rejected].mean().item(),
                }
                if target is not None:
                    record["tv"] = total_variation(probs, target).mean().item()
                history.append(record)
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(logits.detach(), dim=-1), history
