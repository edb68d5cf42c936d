"""Checkers for notebook 02 (the optimal policy) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import bandit
from ._checking import (
    _call,
    _close,
    _first_matching_slip,
    _matches,
    _NotAttempted,
    _number,
    _tensor,
    _verdict,
    _Wrong,
)

# ------------------------------------- 02 optimal policy: the KL at the two ends


def check_02_kl_limits(limits: tuple[float, float], ref_probs: torch.Tensor, rewards: torch.Tensor) -> bool:
    """limits: (KL(pi* || pi_ref) as beta -> 0, the same as beta -> infinity) for the problem (ref_probs (K,),
    rewards (K,)). The truth: pi* tends to pi_ref restricted to the best rewards (KL -log pi_ref(best)), and to pi_ref
    (KL 0)."""

    def body() -> str:
        if limits is None or (isinstance(limits, (tuple, list)) and all(value is None for value in limits)):
            raise _NotAttempted
        if not isinstance(limits, (tuple, list)) or len(limits) != 2:
            raise _Wrong("expected two numbers: (the limit as beta -> 0, the limit as beta -> infinity)")
        small, large = (_number(value, f"the limit as beta -> {end}") for value, end in zip(limits, ("0", "infinity")))
        ref = ref_probs.double()
        best = rewards == rewards.max()
        greedy = -math.log(ref[best].sum().item())  # pi* -> pi_ref on the best responses, renormalised
        close = lambda value, target: math.isfinite(value) and abs(value - target) < 1e-3  # noqa: E731
        if close(small, 0.0) and close(large, greedy):
            raise _Wrong(
                "your two limits look swapped: at which end does the reward win, and at which does the "
                "leash hold pi* on pi_ref?"
            )
        if not close(small, greedy):
            small_slips = {
                "a KL is never negative: check the sign of your log": -greedy,
                "that is a probability, not a KL (a log of a ratio of probabilities)": math.exp(-greedy),
                "that is in base 10; the KL here is in nats (natural log)": greedy / math.log(10),
                f"log {len(ref)} is the KL of a one-hot policy to a *uniform* reference; this reference is not uniform": math.log(
                    len(ref)
                ),
                "that is -log of the reference's most likely response; pi* piles onto the highest *reward*": -math.log(
                    ref.max().item()
                ),
            }
            if math.isinf(small):
                raise _Wrong(
                    "KL(pi* || pi_ref) stays finite as beta -> 0: pi* puts mass only where pi_ref has some "
                    "(an infinite KL is the other direction, KL(pi_ref || pi*))"
                )
            hint = next((hint for hint, value in small_slips.items() if close(small, value)), None)
            raise _Wrong(
                hint
                or f"beta -> 0: got {small:.4g}; which policy does pi* tend to, and what is its KL to "
                "pi_ref? (section 6)"
            )
        if not close(large, 0.0):
            raise _Wrong(
                f"beta -> infinity: got {large:.4g}; which policy does pi* tend to, and what is a "
                "distribution's KL to itself?"
            )
        return (
            f"beta -> 0: pi* is one-hot on the best response, KL = -log pi_ref(best) = {greedy:.4f}; "
            "beta -> infinity: pi* = pi_ref, KL = 0. Finite at both ends"
        )

    return _verdict("KL at the two ends", body)


# ------------------------------------- 02 optimal policy: derive the KL of pi*


def _02_random_problems(beta: float, seed: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E_pi*[r], log Z, KL(pi* || pi_ref)), each (8,), for 8 random problems of 5 responses at this beta."""
    generator = torch.Generator().manual_seed(seed)
    ref_probs = torch.softmax(torch.randn(8, 5, generator=generator, dtype=torch.float64), -1)
    rewards = 2 * torch.randn(8, 5, generator=generator, dtype=torch.float64)
    optimum = bandit.optimal_policy(ref_probs, rewards, beta)
    log_partition = torch.logsumexp(ref_probs.log() + rewards / beta, -1)
    kl = (optimum * (optimum.log() - ref_probs.log())).sum(-1)
    return (optimum * rewards).sum(-1), log_partition, kl


def check_02_kl_formula(kl_of: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """kl_of(expected_reward (M,), log_partition (M,), beta) -> (M,): KL(pi* || pi_ref) from E_pi*[r] and log Z
    alone, for M problems; compared with the KL summed over the responses of random problems."""

    def body() -> str:
        for beta in (0.3, 2.0, 1.0):  # beta = 1 last: there a formula that drops beta would pass
            expected_reward, log_partition, kl = _02_random_problems(beta)
            got = _tensor(_call(kl_of, expected_reward.clone(), log_partition.clone(), beta), kl, f"KL at beta={beta}")
            slips = {
                "a sign: write log(pi* / pi_ref) from pi* = pi_ref exp(r / beta) / Z, and check each term's sign": expected_reward
                / beta
                + log_partition,
                "that is minus the KL (it comes out negative)": log_partition - expected_reward / beta,
                "that is beta times the KL": expected_reward - beta * log_partition,
                "that is minus beta times the KL": beta * log_partition - expected_reward,
                "log Z is missing: pi* is pi_ref exp(r / beta) divided by Z": expected_reward / beta,
                "log Z is divided by beta too; in log pi* it is not": (expected_reward - log_partition) / beta,
                "beta looks missing": expected_reward - log_partition,
            }
            # at beta = 1 some slips coincide with the right answer: only those that differ from it can be named
            slip = _first_matching_slip(got, {hint: value for hint, value in slips.items() if not _matches(kl, value)})
            if slip:
                raise _Wrong(slip)
            _close(got, kl, f"KL(pi* || pi_ref) at beta={beta}", atol=1e-8)
        return (
            "KL(pi* || pi_ref) = E_pi*[r] / beta - log Z, so J(pi*) = E_pi*[r] - beta KL = beta log Z, "
            "the maximum of section 3"
        )

    return _verdict("KL of the optimal policy", body)
