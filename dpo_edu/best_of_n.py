"""Best-of-N: draw N completions from the reference, keep the one a reward function scores highest.

The simplest way to trade KL for reward, with no training at all (the DPO paper's Fig. 2 has it). Selected by the
learned reward model (`dpo_edu.reward_model.RewardModelFunction`) or by the true reward (VADER), scored by the true
reward.

Its KL. The figure every paper uses is  KL(pi_N || pi_ref) = log N - (N - 1) / N.  Beirami et al. (2024,
"Theoretical guarantees on the best-of-n alignment policy") show that this is an UPPER BOUND on the true KL, reached
only in the limit where no response has noticeable reference mass and no two share a reward (a continuum of
distinct rewards). On a finite response space the exact best-of-N policy is computable (`exact_policy`): with the
responses in reward order and F the reference's CDF, pi_N(y) = F(y)^N - F(y-)^N (the probability that the best of
N draws lands on y); responses that share a reward split their group's mass in proportion to the reference. The
bandit of notebook 05 is such a space: `exact_kl` there is at most `kl_bound` (tests/test_best_of_n.py).

Nested draws. One sampling pass draws max(ns) completions per prompt; best-of-n for every smaller n uses the first n
of them. Each prefix is n independent draws from the reference, so every n is a true best-of-n, at the cost of one
pass (the n's are not independent of one another, which a curve over n does not need).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .data import prompt_text
from .evaluate import mean_and_se
from .generation import Samples, sample_completions
from .rewards import RewardFunction, rewards_of, sentiment


def check_ns(ns: Sequence[int]) -> list[int]:
    """`ns` as a sorted list of distinct ints >= 1; ValueError in one line otherwise."""
    bad = [n for n in ns if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad or not ns:
        raise ValueError(f"best-of-N: every N must be an int >= 1, got {bad[0] if bad else 'no N'} in ns={list(ns)}")
    return sorted(set(ns))


def kl_bound(n: int) -> float:
    """log N - (N - 1) / N: the KL(pi_N || pi_ref) usually reported for best-of-N, in nats. An upper bound on the
    true KL (Beirami et al. 2024), tight only for a continuum of distinct rewards (see the module docstring)."""
    check_ns([n])
    return math.log(n) - (n - 1) / n


def exact_policy(ref_probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact best-of-n policy over a finite response space: (..., K) reference probabilities and rewards ->
    (..., K).

    pi_n(y) = ref(y) / ref(G) * (F(r_y)^n - F(r_y-)^n), where F(r) is the reference mass of rewards <= r, F(r-) of
    rewards < r, and G the responses whose reward equals r_y: the best of n draws has reward r_y with probability
    F(r_y)^n - F(r_y-)^n, and a tie among the draws is broken at random, which gives each member of G its share of
    the reference's mass in G. With distinct rewards, pi_n(y) = F(y)^n - F(y-)^n.
    """
    check_ns([n])
    ref_probs = torch.as_tensor(ref_probs)
    rewards = torch.as_tensor(rewards, dtype=ref_probs.dtype)
    mine, others = rewards.unsqueeze(-1), rewards.unsqueeze(-2)  # (..., K, 1) against (..., 1, K)
    mass = ref_probs.unsqueeze(-2)
    at_most, below, equal = (
        (mass * (others <= mine)).sum(-1),
        (mass * (others < mine)).sum(-1),
        (mass * (others == mine)).sum(-1),
    )
    return ref_probs / equal * (at_most**n - below**n)


def exact_kl(ref_probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """KL(pi_n || pi_ref) of the exact best-of-n policy (`exact_policy`), in nats: (..., K) -> (...)."""
    from .bandit import reward_and_kl

    return reward_and_kl(exact_policy(ref_probs, rewards, n), ref_probs, rewards)[1]


def picks(selection: torch.Tensor, n: int) -> torch.Tensor:
    """Which of each prompt's first n samples best-of-n keeps: selection (P, N) rewards, N >= n -> (P,) column
    indices. A tie goes to the earliest sample, which is a random one: the samples are independent draws."""
    check_ns([n])
    if n > selection.shape[-1]:
        raise ValueError(f"best-of-{n} needs {n} samples per prompt, got {selection.shape[-1]}")
    return selection[:, :n].argmax(-1)


def best_of_n(
    selection: Sequence[float] | torch.Tensor, truth: Sequence[float] | torch.Tensor, per_prompt: int, ns: Sequence[int]
) -> list[dict]:
    """Best-of-n for every n in `ns`, from the same samples (nested prefixes).

    selection, truth: (P * per_prompt,) rewards of the samples, a prompt's `per_prompt` samples adjacent (as
    `Samples`): `selection` picks, `truth` scores the pick. Returns one dict per n, in increasing n: n, kl_bound,
    reward_mean and reward_se (true reward of the picks), reward_gain and reward_gain_se (against each prompt's
    first sample, a plain reference sample: 0 at n = 1; paired over prompts), selected_mean (the selecting
    reward of the picks), picked (P,) sample indices into the flat samples, rewards (P,) true rewards of the picks.
    """
    ns = check_ns(ns)
    selection = torch.as_tensor(selection, dtype=torch.float64).view(-1, per_prompt)  # (P, N)
    truth = torch.as_tensor(truth, dtype=torch.float64).view(-1, per_prompt)
    rows, results = torch.arange(len(truth)), []
    for n in ns:
        column = picks(selection, n)
        rewards = truth[rows, column]
        gain, gain_se = mean_and_se((rewards - truth[:, 0]).tolist())
        reward_mean, reward_se = mean_and_se(rewards.tolist())
        results.append(
            {
                "n": n,
                "kl_bound": kl_bound(n),
                "reward_mean": reward_mean,
                "reward_se": reward_se,
                "reward_gain": gain,
                "reward_gain_se": gain_se,
                "selected_mean": selection[rows, column].mean().item(),
                "picked": (rows * per_prompt + column).tolist(),
                "rewards": rewards.tolist(),
            }
        )
    return results


def sample_best_of_n(
    model,
    tokenizer,
    prompts: Sequence,
    ns: Sequence[int],
    *,
    select: RewardFunction,
    truth: RewardFunction = sentiment,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    seed: int = 0,
    precision: str = "auto",
    progress: bool = False,
) -> tuple[list[dict], Samples]:
    """Draw max(ns) completions per prompt from `model` (the reference) once, score them with `select` and with
    `truth` (TRL-convention reward functions; `truth` is not called again when it is `select`), and return
    (`best_of_n`'s results, the samples). Bad `ns` fail before anything is sampled."""
    ns = check_ns(ns)
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    samples = sample_completions(
        model,
        tokenizer,
        texts,
        per_prompt=ns[-1],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
        progress=progress,
    )
    expanded = [prompt for prompt in prompts for _ in range(ns[-1])]
    selection = rewards_of(select, expanded, samples.texts)
    true_rewards = selection if truth is select else rewards_of(truth, expanded, samples.texts)
    return best_of_n(selection, true_rewards, ns[-1], ns), samples
