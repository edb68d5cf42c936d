"""Checkers for the notebooks' exercises.

Each `check_*` takes the learner's answer (a value or a function), tests it
against the package's own implementation on fresh inputs, prints a one-line
verdict and returns True; a wrong answer raises AssertionError with a hint.
An exercise left as `raise NotImplementedError` (or a value left as None)
prints "not attempted yet" and returns None, so a notebook still runs top to
bottom before it is solved, and `assert check_...(...)` fails until it is.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from . import bandit, bradley_terry, losses


class _NotAttempted(Exception):
    pass


def _call(function: Callable, *args: Any) -> Any:
    try:
        return function(*args)
    except NotImplementedError as error:
        raise _NotAttempted from error


def _verdict(name: str, body: Callable[[], str]) -> bool | None:
    try:
        detail = body()
    except _NotAttempted:
        print(f"{name}: not attempted yet - fill in the cell above and run it again")
        return None
    print(f"{name}: correct - {detail}")
    return True


def _close(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    actual = torch.as_tensor(actual, dtype=expected.dtype)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: got inf or nan ({actual}); is it computed stably?"
    worst = (actual - expected).abs().max().item()
    assert worst <= atol, f"{what}: off by up to {worst:.3g} (expected {expected}, got {actual})"


# ---------------------------------------------------------------- 00 welcome

def check_00_device_order(pick_device: Callable[[bool, bool], str]) -> bool:
    """pick_device(cuda_available, mps_available) -> 'cuda' | 'mps' | 'cpu', in the course's order."""

    def body() -> str:
        for cuda in (True, False):
            for mps in (True, False):
                expected = "cuda" if cuda else "mps" if mps else "cpu"
                got = _call(pick_device, cuda, mps)
                assert got == expected, f"with cuda={cuda}, mps={mps}: got {got!r}, expected {expected!r}"
        return "CUDA first, then MPS, then CPU"

    return _verdict("device order", body)


def check_00_initial_dpo_loss(value: float) -> bool:
    """The DPO loss when policy == reference, to 4 decimals."""

    def body() -> str:
        if value is None:
            raise _NotAttempted
        assert abs(float(value) - math.log(2)) < 1e-4, f"got {value}; hint: the margin is 0, and -log sigmoid(0) = ?"
        return f"-log sigmoid(0) = ln 2 = {math.log(2):.4f}"

    return _verdict("initial DPO loss", body)


# ---------------------------------------------------------- 01 Bradley-Terry

def check_01_stable_probability(probability: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """probability(r_chosen, r_rejected) -> P(chosen wins), finite even for rewards near 1000."""

    def body() -> str:
        chosen = torch.tensor([0.0, 2.0, 1000.0, -1000.0, 50.0], dtype=torch.float64)
        rejected = torch.tensor([0.0, 0.5, 999.0, -999.0, -50.0], dtype=torch.float64)
        expected = bradley_terry.preference_probability(chosen, rejected)
        _close(_call(probability, chosen, rejected), expected, "P(chosen wins)", atol=1e-9)
        return "matches sigmoid(r_w - r_l), even at rewards of +-1000"

    return _verdict("stable Bradley-Terry probability", body)


def check_01_negative_log_likelihood(nll: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """nll(scores, winners, losers) -> scalar: minus the summed log-likelihood."""

    def body() -> str:
        generator = torch.Generator().manual_seed(1)
        scores = torch.randn(6, generator=generator, dtype=torch.float64)
        winners, losers = bradley_terry.simulate_comparisons(scores, 50, generator=generator)
        expected = -bradley_terry.log_likelihood(scores, winners, losers)
        _close(_call(nll, scores, winners, losers), expected, "negative log-likelihood", atol=1e-8)
        shifted = _call(nll, scores + 3.0, winners, losers)
        _close(shifted, expected, "negative log-likelihood after adding 3 to every score", atol=1e-8)
        return "equals -sum log sigmoid(s_w - s_l), and adding a constant to every score leaves it unchanged"

    return _verdict("Bradley-Terry negative log-likelihood", body)


# ---------------------------------------------------------- 02 optimal policy

def check_02_optimal_policy(optimal: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """optimal(ref_probs, rewards, beta) -> pi*, (K,), also for tiny beta."""

    def body() -> str:
        generator = torch.Generator().manual_seed(2)
        ref_probs = torch.softmax(torch.randn(5, generator=generator, dtype=torch.float64), -1)
        rewards = torch.randn(5, generator=generator, dtype=torch.float64)
        for beta in (10.0, 1.0, 0.1, 1e-4):
            _close(_call(optimal, ref_probs, rewards, beta), bandit.optimal_policy(ref_probs, rewards, beta), f"pi* at beta={beta}", atol=1e-8)
        return "pi_ref exp(r/beta)/Z, stable down to beta = 0.0001"

    return _verdict("optimal policy", body)


def check_02_log10_sequences(value: float, vocab_size: int, length: int) -> bool:
    """log10 of the number of token sequences of exactly `length` tokens."""

    def body() -> str:
        if value is None:
            raise _NotAttempted
        expected = length * math.log10(vocab_size)
        assert abs(float(value) - expected) < 1e-6, f"got {value}; hint: |V|^T sequences, so log10 is T log10 |V|"
        return f"|V|^T = 10^{expected:.1f} sequences of {length} tokens"

    return _verdict("counting sequences", body)


# --------------------------------------------------------------- 03 DPO loss

def _random_logps(seed: int, batch: int = 16) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4))


def check_03_dpo_loss(dpo: Callable[..., torch.Tensor]) -> bool:
    """dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> (B,) losses."""

    def body() -> str:
        logps = _random_logps(3)
        for beta in (0.1, 0.5):
            expected, _, _ = losses.dpo_loss(*logps, beta)
            _close(_call(dpo, *logps, beta), expected, f"DPO losses at beta={beta}", atol=1e-8)
        same = torch.full((4,), -12.0, dtype=torch.float64)
        _close(_call(dpo, same, same, same, same, 0.1), torch.full((4,), math.log(2), dtype=torch.float64), "loss when policy == reference")
        return "matches dpo_edu.losses.dpo_loss, and gives ln 2 when policy == reference"

    return _verdict("DPO loss", body)


def check_03_gradient_weight(weight: Callable[..., torch.Tensor]) -> bool:
    """weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> (B,).

    The factor in front of (grad log pi_w - grad log pi_l) in minus the loss's
    gradient, divided by beta: it must equal what autograd finds.
    """

    def body() -> str:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected = _random_logps(4)
        policy_chosen = policy_chosen.clone().requires_grad_(True)
        beta = 0.3
        loss, _, _ = losses.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        (gradient,) = torch.autograd.grad(loss.sum(), policy_chosen)
        expected = -gradient / beta  # d loss / d log pi_w = -beta * weight
        got = _call(weight, policy_chosen.detach(), policy_rejected, ref_chosen, ref_rejected, beta)
        _close(got, expected, "gradient weight", atol=1e-8)
        return "sigmoid(r_hat_l - r_hat_w): largest for the pairs the policy gets wrong, as autograd agrees"

    return _verdict("gradient weight", body)


# --------------------------------------------------------------- 04 log-probs

def check_04_sequence_logprobs(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """function(logits (B, T, V), labels (B, T) with -100) -> (B,) summed next-token log-probs."""
    from .logprobs import sequence_logprobs

    def body() -> str:
        generator = torch.Generator().manual_seed(5)
        logits = 3 * torch.randn(3, 12, 50, generator=generator)
        labels = torch.randint(50, (3, 12), generator=generator)
        labels[:, :4] = -100
        labels[2, 9:] = -100
        _close(_call(function, logits, labels), sequence_logprobs(logits, labels), "sequence log-probs", atol=1e-4)
        return "shifted by one, masked, summed: equals dpo_edu.logprobs.sequence_logprobs"

    return _verdict("sequence log-probs", body)


def check_04_labels(make_labels: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """make_labels(input_ids (B, T), prompt_lengths (B,), attention_mask (B, T)) -> labels (B, T) with -100 on prompt and padding."""

    def body() -> str:
        input_ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
        attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
        prompt_lengths = torch.tensor([2, 4])
        expected = torch.tensor([[-100, -100, 7, 8, 9, -100, -100], [-100, -100, -100, -100, 5, 6, 7]])
        got = torch.as_tensor(_call(make_labels, input_ids.clone(), prompt_lengths, attention_mask))
        assert torch.equal(got, expected), f"expected\n{expected}\ngot\n{got}"
        return "prompt and padding masked with -100, response tokens kept"

    return _verdict("labels", body)


# ------------------------------------------------------------------ 05 bandit

def check_05_total_variation(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """function(p (..., K), q (..., K)) -> TV distance (...)."""
    from .bandit import total_variation

    def body() -> str:
        generator = torch.Generator().manual_seed(6)
        p = torch.softmax(torch.randn(4, 5, generator=generator, dtype=torch.float64), -1)
        q = torch.softmax(torch.randn(4, 5, generator=generator, dtype=torch.float64), -1)
        _close(_call(function, p, q), total_variation(p, q), "TV distance", atol=1e-10)
        _close(_call(function, p, p), torch.zeros(4, dtype=torch.float64), "TV(p, p)")
        return "half the L1 distance: 0 for equal policies, at most 1"

    return _verdict("total variation", body)


def check_05_ipo_ratio(ratio: Callable[[float, float, float], float]) -> bool:
    """ratio(ref_w, ref_l, beta) -> pi(y_w) / pi(y_l) where IPO settles when y_w always beats y_l (two responses)."""

    def body() -> str:
        for ref_w, ref_l, beta in ((0.5, 0.5, 0.1), (0.2, 0.8, 1.0), (0.7, 0.3, 0.25)):
            expected = ref_w / ref_l * math.exp(1 / (2 * beta))
            got = float(_call(ratio, ref_w, ref_l, beta))
            assert abs(got - expected) <= 1e-6 * expected, f"ref=({ref_w}, {ref_l}), beta={beta}: got {got}, expected {expected:.6g}; hint: IPO's loss is 0 at h = 1/(2 beta)"
        return "pi_w/pi_l = (ref_w/ref_l) exp(1/(2 beta)): finite, unlike DPO's"

    return _verdict("IPO's fixed point", body)


# ---------------------------------------------------------------- 06 full run

def check_06_win_rate(function: Callable[[list, list], float]) -> bool:
    """function(policy_rewards, reference_rewards) -> the fraction of prompts the policy wins, ties counting 1/2."""
    from .evaluate import win_rate

    def body() -> str:
        generator = torch.Generator().manual_seed(6)
        for n in (1, 7, 50):
            # rewards on a coarse grid, so ties happen (VADER gives many exact zeros)
            policy = (torch.randint(-2, 3, (n,), generator=generator) / 2).tolist()
            reference = (torch.randint(-2, 3, (n,), generator=generator) / 2).tolist()
            got, expected = float(_call(function, policy, reference)), win_rate(policy, reference)
            assert math.isclose(got, expected, abs_tol=1e-9), (
                f"for {n} prompts got {got:.4f}, expected {expected:.4f}; does a tie count one half?")
        return "wins count 1, ties 1/2, losses 0"

    return _verdict("win rate", body)


def check_06_kl_estimate(function: Callable[[torch.Tensor, torch.Tensor], float]) -> bool:
    """function(policy_logps, reference_logps) -> KL(policy || reference) estimated from the policy's own samples."""

    def body() -> str:
        generator = torch.Generator().manual_seed(7)
        reference_logps = -20 + 5 * torch.rand(64, generator=generator)
        policy_logps = reference_logps + torch.randn(64, generator=generator).abs()
        got = float(_call(function, policy_logps, reference_logps))
        expected = (policy_logps - reference_logps).mean().item()
        assert not math.isclose(got, -expected, rel_tol=1e-6), "the sign is flipped: KL(pi || pi_ref) averages log pi - log pi_ref"
        assert math.isclose(got, expected, rel_tol=1e-6), f"got {got:.4f}, expected {expected:.4f}: the mean over samples of log pi(y|x) - log pi_ref(y|x)"
        return "the mean log-ratio over the policy's own samples"

    return _verdict("KL estimate", body)


# ---------------------------------------------------------------- 07 ODPO

def check_07_odpo_loss(odpo: Callable[..., torch.Tensor]) -> bool:
    """odpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, offset) -> per-pair ODPO losses (B,)."""

    def body() -> str:
        for seed in (0, 1):
            logps = _random_logps(seed)
            offset = torch.randn(logps[0].shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
            for beta in (0.1, 1.0):
                expected, _, _ = losses.dpo_loss(*logps, beta, offset=offset)
                got = _call(odpo, *logps, beta, offset)
                outside = losses.dpo_loss(*logps, beta)[0] - offset
                assert not torch.allclose(torch.as_tensor(got), outside, atol=1e-5), (
                    "the offset sits outside the sigmoid: it must be subtracted inside, -log sigmoid(beta h - offset)")
                _close(got, expected, f"ODPO loss at beta={beta}")
        return "-log sigmoid(beta * h - offset), the offset inside the sigmoid"

    return _verdict("ODPO loss", body)


def check_07_offset(offset: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """offset(chosen_scores, rejected_scores, alpha) -> alpha * log(max(s_w - s_l, 1e-3)), finite for ties."""

    def body() -> str:
        chosen = torch.tensor([0.9, 0.5, 0.2, 0.3, -0.1])
        rejected = torch.tensor([-0.8, 0.4, 0.2, 0.2995, -0.6])  # a tie and a near-tie among them
        for alpha in (0.5, 1.0, 2.0):
            got = torch.as_tensor(_call(offset, chosen, rejected, alpha))
            _close(got, losses.odpo_offset(chosen, rejected, alpha), f"offsets at alpha={alpha} (ties: gap raised to 1e-3)", atol=1e-4)
        return "alpha * log of the score gap, with ties floored at a gap of 1e-3"

    return _verdict("ODPO offset", body)
