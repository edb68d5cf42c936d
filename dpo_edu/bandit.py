"""Tabular policies over a finite set of responses, where everything has a closed form."""

from __future__ import annotations

import math

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


def kl_regularised_objective(
    policy_probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
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
    weights: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    initial_logits: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    **loss_settings,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """DPO (or IPO, hinge, ODPO) on a tabular policy pi_theta = softmax(logits), full batch, Adam.

    ref_probs: (P, K); prompts, chosen, rejected: (N,) long. The logits start at
    log ref_probs, so step 0 is policy == reference (loss ln 2 for DPO), unless
    `initial_logits` (P, K) says otherwise.
    target: (P, K), e.g. pi*, to record the mean TV distance to it.
    weights: (N,) >= 0, or None for equal weights: the loss is sum(w * loss) / sum(w)
        (with `all_pairs`, the exact infinite-data loss).
    offset: (N,) ODPO's Delta per pair (see `dpo_edu.losses.odpo_offset`), sigmoid loss only.
    rewards: (P, K) true rewards, to record the exact "reward" E_pi[r] and "kl"
        KL(pi || pi_ref), each averaged over prompts.
    loss_settings: further keyword arguments of `losses.dpo_loss`, e.g. label_smoothing=eps
        with loss_type "sigmoid" (cDPO) or "robust" (rDPO). Responses are one token, so every
        length is 1 (IPO's and SimPO's length normalisation does nothing here).
    Returns the final policy (P, K) and a history of
    {"step", "loss", "tv" (if target), "reward", "kl" (if rewards), "rejected_prob", "chosen_prob"}
    every `record_every` steps.
    """
    from .losses import dpo_loss

    ref_logps = torch.log(torch.as_tensor(ref_probs, dtype=torch.float64))
    start = ref_logps if initial_logits is None else torch.as_tensor(initial_logits, dtype=torch.float64)
    if start.shape != ref_logps.shape:
        raise ValueError(
            f"initial_logits has shape {tuple(start.shape)}, expected {tuple(ref_logps.shape)} like ref_probs"
        )
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != chosen.shape or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be ({chosen.shape[0]},), >= 0 and not all 0")
    logits = start.clone().requires_grad_(True)
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
            offset=offset,
            **loss_settings,
        )
        loss = losses.mean() if weights is None else (weights * losses).sum() / weights.sum()
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                probs = policy_logps.exp()
                share = (
                    torch.full(chosen.shape, 1 / chosen.numel(), dtype=probs.dtype)
                    if weights is None
                    else weights / weights.sum()
                )
                record = {
                    "step": step,
                    "loss": loss.item(),
                    "chosen_prob": (share * probs[prompts, chosen]).sum().item(),
                    "rejected_prob": (share * probs[prompts, rejected]).sum().item(),
                }
                if target is not None:
                    record["tv"] = total_variation(probs, target).mean().item()
                if rewards is not None:
                    reward, kl = reward_and_kl(probs, ref_logps.exp(), rewards)
                    record["reward"], record["kl"] = reward.mean().item(), kl.mean().item()
                history.append(record)
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(logits.detach(), dim=-1), history


def reward_and_kl(
    policy_probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact point of a tabular policy on the reward-KL plane: (E_pi[r], KL(pi || pi_ref)).

    All three (..., K); returns two (...) tensors. Responses with pi = 0 add 0 to the KL.
    """
    policy_probs = torch.as_tensor(policy_probs)
    ref_probs = torch.as_tensor(ref_probs, dtype=policy_probs.dtype)
    rewards = torch.as_tensor(rewards, dtype=policy_probs.dtype)
    expected_reward = (policy_probs * rewards).sum(-1)
    kl = torch.xlogy(policy_probs, policy_probs).sum(-1) - (policy_probs * torch.log(ref_probs)).sum(-1)
    return expected_reward, kl


def preference_matrix(rewards: torch.Tensor, *, deterministic: bool = False) -> torch.Tensor:
    """P(y beats y') for every pair: sigmoid(r_y - r_y') (Bradley-Terry), or 1 / 0 when `deterministic`.

    rewards: (..., K); returns (..., K, K). The diagonal is 1/2 (a response against itself is a tie),
    so row y's mean is y's win rate against a uniformly drawn response.
    """
    rewards = torch.as_tensor(rewards)
    gap = rewards[..., :, None] - rewards[..., None, :]
    if deterministic:
        return (gap > 0).to(rewards.dtype) + 0.5 * (gap == 0).to(rewards.dtype)
    return torch.sigmoid(gap)


def all_pairs(rewards: torch.Tensor, *, deterministic: bool = False) -> tuple[torch.Tensor, ...]:
    """The infinite-data limit of `sample_preferences`: every labelled pair once, with its probability.

    rewards: (P, K). Returns (prompts, chosen, rejected, weights), each (M,): one row per
    (prompt, chosen, rejected) with chosen != rejected and a non-zero probability, weighted by
    P(prompt, pair) * P(chosen beats rejected); the weights sum to 1. Training on them with
    `train_tabular_dpo(..., weights=weights)` minimises the expected loss exactly.
    """
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (P, K) with K >= 2, got {tuple(rewards.shape)}")
    n_prompts, n_responses = rewards.shape
    if deterministic and (preference_matrix(rewards, deterministic=True) == 0.5).sum() > n_prompts * n_responses:
        raise ValueError("deterministic preferences need distinct rewards within each prompt")
    wins = preference_matrix(rewards, deterministic=deterministic)  # (P, K, K)
    pair_probability = 2.0 / (n_prompts * n_responses * (n_responses - 1))  # P(prompt, unordered pair), uniform
    weights = wins * pair_probability
    weights = weights * (1 - torch.eye(n_responses, dtype=weights.dtype))  # never a response against itself
    prompts, chosen, rejected = (weights > 0).nonzero(as_tuple=True)
    return prompts, chosen, rejected, weights[prompts, chosen, rejected]


def ipo_optimal_policy(ref_probs: torch.Tensor, preference_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """Where IPO converges with full coverage: pi_ref exp(g / beta) / Z, g(y) = mean_y' P(y beats y').

    The minimiser of the expected IPO loss E[(h - 1/(2 beta))^2] when every pair of responses is
    compared equally often (as `sample_preferences` draws them): log pi/pi_ref = (g - 1/2) / beta
    + const. It is `optimal_policy` for the reward g, a win rate in [0, 1] (Azar et al. 2023,
    Psi = identity). ref_probs: (..., K); preference_probs: (..., K, K) from `preference_matrix`.
    """
    preference_probs = torch.as_tensor(preference_probs)
    return optimal_policy(ref_probs, preference_probs.mean(-1), beta)


def frontier_at_kl(ref_probs: torch.Tensor, rewards: torch.Tensor, kl, *, iterations: int = 100):
    """The best reward any policy reaches at KL(pi || pi_ref) = kl, and the beta of pi* that reaches it.

    For one prompt: ref_probs, rewards (K,) or (1, K). pi*_beta maximises E[r] - beta KL, so no
    policy with KL <= KL(pi*_beta) has more reward: the curve beta -> (KL, E[r]) of pi*_beta is
    the reward-KL frontier. Its KL falls monotonically as beta grows; bisection on log beta.
    kl: a float, or a tensor (n,) of KLs handled at once.
    Returns (beta, reward): floats for a float kl, (n,) tensors for a tensor.
    Raises ValueError for a kl outside [0, log(1 / pi_ref(argmax r))).
    """
    ref_probs = torch.as_tensor(ref_probs, dtype=torch.float64).reshape(-1)
    rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    targets = torch.as_tensor(kl, dtype=torch.float64).reshape(-1)
    ceiling = -torch.log(ref_probs[rewards == rewards.max()].sum()).item()
    if not ((targets >= 0) & (targets < ceiling)).all():
        raise ValueError(f"kl must be in [0, {ceiling:.4f}) (log 1/pi_ref of the best responses), got {kl}")
    spread = math.log((rewards.max() - rewards.min()).item())
    low = torch.full_like(targets, spread - 40.0)  # log beta where KL is ~ the ceiling
    high = torch.full_like(targets, spread + 40.0)  # log beta where KL is ~ 0
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        _, middle_kl = reward_and_kl(optimal_policy(ref_probs, rewards, middle.exp()[:, None]), ref_probs, rewards)
        too_far = middle_kl > targets  # KL too large: beta must grow
        low, high = torch.where(too_far, middle, low), torch.where(too_far, high, middle)
    betas = (0.5 * (low + high)).exp()
    reward, _ = reward_and_kl(optimal_policy(ref_probs, rewards, betas[:, None]), ref_probs, rewards)
    if isinstance(kl, torch.Tensor):
        return betas, reward
    return betas.item(), reward.item()


FRONTIER_METHODS = ("dpo", "odpo", "ipo")


def frontier_points(
    ref_probs: torch.Tensor,
    rewards: torch.Tensor,
    betas,
    *,
    method: str,
    deterministic: bool = True,
    alpha: float = 1.0,
    steps: int = 300,
    learning_rate: float = 0.1,
) -> torch.Tensor:
    """Train `method` at each beta on the exact (infinite-data) preferences; return its exact (KL, reward).

    The data are `all_pairs(rewards, deterministic=...)`: with `deterministic` (the default) the
    higher reward always wins, the graded setting of ODPO, whose offset alpha * log(r_w - r_l)
    uses the known rewards as scores. method: "dpo", "odpo" (DPO with that offset) or "ipo".
    Returns (len(betas), 2): KL(pi || pi_ref) and E_pi[r], averaged over prompts.
    """
    from .losses import odpo_offset

    if method not in FRONTIER_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(FRONTIER_METHODS)}")
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    prompts, chosen, rejected, weights = all_pairs(rewards, deterministic=deterministic)
    offset = None
    if method == "odpo":  # raises on a pair whose chosen response has the lower reward (noisy labels)
        offset = odpo_offset(rewards[prompts, chosen], rewards[prompts, rejected], alpha).to(torch.float64)
    points = []
    for beta in betas:
        _, history = train_tabular_dpo(
            ref_probs,
            prompts,
            chosen,
            rejected,
            beta,
            loss_type="ipo" if method == "ipo" else "sigmoid",
            steps=steps,
            learning_rate=learning_rate,
            record_every=steps,
            weights=weights,
            offset=offset,
            rewards=rewards,
        )
        points.append((history[-1]["kl"], history[-1]["reward"]))
    return torch.tensor(points, dtype=torch.float64)
