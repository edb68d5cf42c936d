"""Checkers for the notebooks' exercises.

Each `check_*` takes the learner's answer (a value or a function), tests it
against the package's own implementation on fresh inputs, and prints one line:
"correct - ..." (returns True) or "wrong - <hint>" (returns False). The hint
names the mistake without printing the answer. A checker never raises: a
function that raises, returns None or returns the wrong type or shape is a
wrong answer like any other.
An exercise left as `raise NotImplementedError` (or a value left as None)
prints "not attempted yet" and returns None, so a notebook still runs top to
bottom before it is solved, and `assert check_...(...)` fails until it is.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from . import bandit, bradley_terry, losses


class _NotAttempted(Exception):
    pass


class _Wrong(Exception):
    """A wrong answer; its message is the one-line hint the learner sees."""


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(function: Callable, *args: Any) -> Any:
    """The learner's function on `args`; whatever goes wrong becomes a one-line _Wrong."""
    if not callable(function):
        raise _Wrong(f"expected a function, got {type(function).__name__}: pass the function itself, without calling it")
    try:
        result = function(*args)
    except NotImplementedError as error:
        raise _NotAttempted from error
    except Exception as error:
        raise _Wrong(f"your function raised {type(error).__name__}: {_one_line(error, 160)}") from error
    if result is None:
        raise _Wrong("your function returned None - did you forget `return`?")
    return result


def _verdict(name: str, body: Callable[[], str]) -> bool | None:
    try:
        detail = body()
    except _NotAttempted:
        print(f"{name}: not attempted yet - fill in the cell above and run it again")
        return None
    except (_Wrong, AssertionError) as error:
        print(f"{name}: wrong - {_one_line(error)}")
        return False
    except Exception as error:  # an answer of a kind the check did not foresee
        print(f"{name}: wrong - your answer could not be checked ({type(error).__name__}: {_one_line(error, 160)})")
        return False
    print(f"{name}: correct - {detail}")
    return True


def _digits(integer: int) -> int:
    """Decimal digits of a (possibly huge) integer, without str(), which Python caps at 4300 digits."""
    return int(abs(integer).bit_length() * math.log10(2)) + 1


def _number(value: Any, what: str) -> float:
    """One real number from a float, int, numpy scalar or one-element tensor."""
    if isinstance(value, (str, complex)) or callable(value):
        raise _Wrong(f"{what}: expected a real number, got {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e300:
        raise _Wrong(f"{what}: got an integer with about {_digits(value)} digits, far beyond any float")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except Exception:
        raise _Wrong(f"{what}: expected one number, got {type(value).__name__}") from None
    if tensor.numel() != 1:
        raise _Wrong(f"{what}: expected one number, got {tensor.numel()} values of shape {tuple(tensor.shape)}")
    return tensor.item()


def _tensor(value: Any, expected: torch.Tensor, what: str) -> torch.Tensor:
    """The learner's result as a tensor shaped and typed like `expected`."""
    if isinstance(value, str):
        raise _Wrong(f"{what}: expected a tensor, got a str")
    try:
        tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except Exception:
        raise _Wrong(f"{what}: expected a tensor, got {type(value).__name__}") from None
    if tensor.shape != expected.shape:
        per_pair = " - one value per row (per pair): do not average or sum over the batch" if tensor.dim() < expected.dim() else ""
        raise _Wrong(f"{what}: shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}{per_pair}")
    if tensor.is_complex():
        raise _Wrong(f"{what}: got complex numbers")
    return tensor.to(expected.dtype)


def _close(actual: Any, expected: torch.Tensor, what: str, atol: float = 1e-5, rtol: float = 0.0) -> torch.Tensor:
    """Raise _Wrong unless `actual` matches `expected` entry by entry; returns `actual` as a tensor."""
    actual = _tensor(actual, expected, what)
    broken = torch.isfinite(expected) & ~torch.isfinite(actual)
    if broken.any():
        raise _Wrong(f"{what}: got inf or nan where the right value is finite ({int(broken.sum())} of {expected.numel()} "
                     "entries, at the extreme test inputs); is it computed stably?")
    error = (actual - expected).abs() - rtol * expected.abs()
    if (error > atol).any():
        worst = (actual - expected).abs().max().item()
        raise _Wrong(f"{what}: off by up to {worst:.3g} ({int((error > atol).sum())} of {expected.numel()} entries wrong)")
    return actual


def _matches(actual: torch.Tensor, candidate: torch.Tensor, atol: float = 1e-6) -> bool:
    return actual.shape == candidate.shape and torch.allclose(actual, candidate.to(actual.dtype), atol=atol, rtol=1e-6)


def _first_matching_slip(actual: torch.Tensor, slips: dict[str, torch.Tensor]) -> str | None:
    return next((hint for hint, value in slips.items() if _matches(actual, value)), None)


# ---------------------------------------------------------------- 00 welcome

def check_00_device_order(pick_device: Callable[[bool, bool], str]) -> bool:
    """pick_device(cuda_available, mps_available) -> 'cuda' | 'mps' | 'cpu', in the course's order."""

    def body() -> str:
        for cuda in (True, False):
            for mps in (True, False):
                expected = "cuda" if cuda else "mps" if mps else "cpu"
                got = _call(pick_device, cuda, mps)
                if not isinstance(got, str):
                    raise _Wrong(f"with cuda={cuda}, mps={mps}: got a {type(got).__name__}, expected a string such as 'cpu'")
                assert got == expected, f"with cuda={cuda}, mps={mps}: got {got!r}, expected {expected!r}"
        return "CUDA first, then MPS, then CPU"

    return _verdict("device order", body)


def check_00_initial_dpo_loss(value: float) -> bool:
    """The DPO loss when policy == reference, computed rather than typed in.

    Only a value right to float precision (within 1e-7, which float32 meets)
    passes, so 0.6931 copied from a printout is rejected: the exercise is to
    compute it.
    """

    def body() -> str:
        if value is None:
            raise _NotAttempted
        got = _number(value, "initial loss")
        error = abs(got - math.log(2))
        if error <= 1e-7:
            return f"-log sigmoid(0) = ln 2 = {math.log(2):.4f}, whatever beta"
        if error < 1e-3:
            raise _Wrong(f"got {got}, right only to {math.floor(-math.log10(error))} decimals: a number typed in from a printout? "
                         "Compute it with math (log, exp) so that it is right to float precision")
        if got < 0:
            raise _Wrong(f"got {got:.6g}, a negative loss: -log of a probability is never negative; check the sign")
        if abs(got - 0.5) < 1e-9:
            raise _Wrong("got 0.5: that is the probability sigmoid(0), not the loss computed from it")
        raise _Wrong(f"got {got:.6g}; hint: what is the margin when policy == reference, and what loss does that margin give?")

    return _verdict("initial DPO loss", body)


# Candidate bugs for notebook 00's exercise "which sign bug passes the ln 2 check?".
# Each is a wrong DPO loss of (policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta);
# the checker finds the ones that still give ln 2 at step 1 by computing them.
SIGN_BUG_CANDIDATES = {
    "a": "chosen and rejected swapped",
    "b": "reference minus policy in both log-ratios",
    "c": "loss = +logsigmoid(margin) instead of -logsigmoid(margin)",
    "d": "reference forgotten: the margin uses the policy's log-probs only",
}
_SIGN_BUG_LOSSES = {
    "a": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pr - rr) - (pc - rc))),
    "b": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((rc - pc) - (rr - pr))),
    "c": lambda pc, pr, rc, rr, beta: F.logsigmoid(beta * ((pc - rc) - (pr - rr))),
    "d": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)),
}


def _sign_bugs_that_pass() -> set[str]:
    """The candidates whose step-1 loss (policy == reference, random log-probs) is ln 2 at every beta tried."""
    chosen_logps, rejected_logps = _random_logps(8)[:2]
    passing = set()
    for label, loss in _SIGN_BUG_LOSSES.items():
        step_one = [loss(chosen_logps, rejected_logps, chosen_logps.clone(), rejected_logps.clone(), beta) for beta in (0.1, 1.0)]
        if all(torch.allclose(value, torch.full_like(value, math.log(2))) for value in step_one):
            passing.add(label)
    return passing


def check_00_sign_bugs(passes: set[str]) -> bool:
    """passes: the letters of the SIGN_BUG_CANDIDATES whose first loss (policy == reference) is still ln 2."""

    def body() -> str:
        if passes is None:
            raise _NotAttempted
        if isinstance(passes, str):
            chosen = {letter for letter in passes.lower() if letter.isalpha()}
        elif isinstance(passes, Iterable):
            chosen = {str(label).strip().lower() for label in passes}
        else:
            raise _Wrong(f"expected a set of the candidates' letters, got {type(passes).__name__}")
        unknown = chosen - set(SIGN_BUG_CANDIDATES)
        if unknown:
            raise _Wrong(f"unknown label(s) {sorted(unknown)}; the candidates are {', '.join(SIGN_BUG_CANDIDATES)}")
        truth = _sign_bugs_that_pass()
        hints = []
        if chosen - truth:
            hints.append("at least one bug in your set gives a first loss other than ln 2")
        if truth - chosen:
            hints.append("at least one bug you left out gives ln 2 at step 1 as well")
        if hints:
            raise _Wrong("; ".join(hints) + " - compute each candidate's first loss with policy == reference")
        return "a bug that only flips the margin's sign keeps a margin of 0 at 0: only the first step's direction exposes it"

    return _verdict("sign bugs that pass the ln 2 check", body)


# ---------------------------------------------------------- 01 Bradley-Terry

def check_01_stable_probability(probability: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """probability(r_chosen, r_rejected) -> P(chosen wins), finite even for rewards near 1000 and gaps of hundreds."""

    def body() -> str:
        cases = (  # float64 gaps up to 900, float32 gaps of 130: exp of the gap alone overflows in both
            (torch.tensor([0.0, 2.0, 1000.0, -1000.0, 50.0, 800.0, -100.0], dtype=torch.float64),
             torch.tensor([0.0, 0.5, 999.0, -999.0, -50.0, -100.0, 800.0], dtype=torch.float64), 1e-9),
            (torch.tensor([100.0, -30.0, 0.5, 90.0]), torch.tensor([-30.0, 100.0, -0.5, 89.0]), 1e-6),
        )
        for chosen, rejected, atol in cases:
            expected = bradley_terry.preference_probability(chosen, rejected)
            got = _tensor(_call(probability, chosen.clone(), rejected.clone()), expected, "P(chosen wins)")
            if torch.isfinite(got).all() and _matches(got, 1 - expected):
                raise _Wrong("that is the probability that the *rejected* response wins")
            _close(got, expected, f"P(chosen wins) in {str(chosen.dtype).removeprefix('torch.')}", atol=atol)
        return "matches sigmoid(r_w - r_l), even at rewards of +-1000 and gaps of 900"

    return _verdict("stable Bradley-Terry probability", body)


def check_01_negative_log_likelihood(nll: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """nll(scores, winners, losers) -> scalar: minus the summed log-likelihood, finite for any score gap."""

    def body() -> str:
        generator = torch.Generator().manual_seed(1)
        scores = torch.randn(6, generator=generator, dtype=torch.float64)
        winners, losers = bradley_terry.simulate_comparisons(scores, 50, generator=generator)
        expected = -bradley_terry.log_likelihood(scores, winners, losers)
        got = _tensor(_call(nll, scores.clone(), winners, losers), expected, "negative log-likelihood")
        slip = _first_matching_slip(got, {
            "that is the log-likelihood itself, which is <= 0; the exercise asks for minus it": -expected,
            "that looks like an average over comparisons; the exercise asks for the sum": expected / len(winners),
            "winners and losers look swapped": -bradley_terry.log_likelihood(scores, losers, winners),
        })
        if slip:
            raise _Wrong(slip)
        _close(got, expected, "negative log-likelihood", atol=1e-8)
        # float32 upsets and landslides: score gaps of +-120 and +-1000
        extreme_scores = torch.tensor([0.0, 120.0, 1000.0])
        extreme_winners, extreme_losers = torch.tensor([1, 0, 2, 0]), torch.tensor([0, 1, 0, 2])
        extreme_expected = -bradley_terry.log_likelihood(extreme_scores, extreme_winners, extreme_losers)
        _close(_call(nll, extreme_scores.clone(), extreme_winners, extreme_losers), extreme_expected,
               "negative log-likelihood for score gaps of +-120 and +-1000 in float32", atol=1e-4, rtol=1e-6)
        shifted = _call(nll, scores + 3.0, winners, losers)
        _close(shifted, expected, "negative log-likelihood after adding 3 to every score", atol=1e-8)
        return "equals -sum log sigmoid(s_w - s_l), stays finite for gaps of 1000, and a constant added to every score changes nothing"

    return _verdict("Bradley-Terry negative log-likelihood", body)


# ---------------------------------------------------------- 02 optimal policy

def check_02_optimal_policy(optimal: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """optimal(ref_probs, rewards, beta) -> pi*, for ref_probs and rewards of shape (..., K), normalised over the
    last axis (K responses); stable for tiny beta."""

    def body() -> str:
        generator = torch.Generator().manual_seed(2)
        ref_probs = torch.softmax(torch.randn(5, generator=generator, dtype=torch.float64), -1)
        rewards = torch.randn(5, generator=generator, dtype=torch.float64)
        got = _tensor(_call(optimal, ref_probs.clone(), rewards.clone(), 0.1), ref_probs, "pi* at beta=0.1")
        slip = _first_matching_slip(got, {
            "pi_ref enters as a probability where log space needs its log": torch.softmax(ref_probs + rewards / 0.1, -1),
            "beta works the wrong way round: a smaller beta must move pi* further from pi_ref, towards the best reward":
                torch.softmax(ref_probs.log() + rewards * 0.1, -1),
        })
        if slip:
            raise _Wrong(slip)
        for beta in (10.0, 1.0, 0.1, 1e-4):
            _close(_call(optimal, ref_probs.clone(), rewards.clone(), beta), bandit.optimal_policy(ref_probs, rewards, beta), f"pi* at beta={beta}", atol=1e-8)
        batch_ref = torch.softmax(torch.randn(3, 5, generator=generator, dtype=torch.float64), -1)
        batch_rewards = torch.randn(3, 5, generator=generator, dtype=torch.float64)
        for beta in (1.0, 1e-4):
            try:
                _close(_call(optimal, batch_ref.clone(), batch_rewards.clone(), beta), bandit.optimal_policy(batch_ref, batch_rewards, beta), "pi*", atol=1e-8)
            except _Wrong as error:
                raise _Wrong(f"right for one distribution, wrong for a batch of 3 rows of 5 responses at beta={beta}, "
                             f"where each row is its own distribution over the last axis ({error})") from None
        return "pi_ref exp(r/beta)/Z row by row, stable down to beta = 0.0001"

    return _verdict("optimal policy", body)


def check_02_log10_sequences(value: float, vocab_size: int, length: int) -> bool:
    """log10 of the number of token sequences of exactly `length` tokens."""

    def body() -> str:
        if value is None:
            raise _NotAttempted
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e15:
            raise _Wrong(f"got an integer with about {_digits(value)} digits: that is the count itself, and the exercise asks for its log10")
        got = _number(value, "log10 of the count")
        expected = length * math.log10(vocab_size)
        if abs(got - expected) < 1e-6 * max(1.0, expected):
            return f"|V|^T = 10^{expected:.1f} sequences of {length} tokens"
        if not math.isfinite(got):
            raise _Wrong(f"got {got}: the count overflowed; take the logarithm before anything gets that large")
        if abs(got - length * math.log(vocab_size)) < 1e-6 * got:
            raise _Wrong("that is the natural logarithm (base e); the exercise asks for log10")
        if abs(got - math.log10(vocab_size)) < 1e-6:
            raise _Wrong("that counts sequences of one token; the count must grow with the length T")
        raise _Wrong(f"got {got:.6g}; hint: the count is a power, and the logarithm of a power need not form the power")

    return _verdict("counting sequences", body)


# --------------------------------------------------------------- 03 DPO loss

def _random_logps(seed: int, batch: int = 16) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4))


def _extreme_margin_logps() -> tuple[torch.Tensor, ...]:
    """float32 log-probs whose DPO margins at beta = 1 are +120, -120, +1000 and -1000."""
    ref_chosen = torch.full((4,), -1500.0)
    rejected = torch.full((4,), -40.0)
    policy_chosen = ref_chosen + torch.tensor([120.0, -120.0, 1000.0, -1000.0])
    return policy_chosen, rejected, ref_chosen, rejected.clone()


def _dpo_slips(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> dict[str, torch.Tensor]:
    """What the usual slips in a DPO loss return, keyed by the hint that names each slip."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return {
        "the margin's sign looks flipped: chosen and rejected swapped, or reference minus policy instead of "
        "policy minus reference": -F.logsigmoid(-margin),
        "every loss is negative: the minus in front of the loss looks missing": F.logsigmoid(margin),
        "beta looks missing: your losses are those of beta = 1": -F.logsigmoid(margin / beta),
        "the reference log-probs look unused: each log-prob must be measured against the reference's":
            -F.logsigmoid(beta * (policy_chosen - policy_rejected)),
    }


def check_03_dpo_loss(dpo: Callable[..., torch.Tensor]) -> bool:
    """dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> (B,) losses,
    finite for margins of +-1000 in float32."""

    def body() -> str:
        logps = _random_logps(3)
        expected = losses.dpo_loss(*logps, 0.1)[0]
        got = _tensor(_call(dpo, *(logp.clone() for logp in logps), 0.1), expected, "DPO losses at beta=0.1")
        slip = _first_matching_slip(got, _dpo_slips(*logps, 0.1))
        if slip:
            raise _Wrong(slip)
        for beta in (0.1, 0.5):
            expected = losses.dpo_loss(*logps, beta)[0]
            _close(_call(dpo, *(logp.clone() for logp in logps), beta), expected, f"DPO losses at beta={beta}", atol=1e-8)
        extreme = _extreme_margin_logps()
        _close(_call(dpo, *(logp.clone() for logp in extreme), 1.0), losses.dpo_loss(*extreme, 1.0)[0],
               "DPO losses at margins of +-120 and +-1000 in float32", atol=1e-4, rtol=1e-6)
        same = torch.full((4,), -12.0, dtype=torch.float64)
        _close(_call(dpo, same, same.clone(), same.clone(), same.clone(), 0.1), torch.full((4,), math.log(2), dtype=torch.float64), "loss when policy == reference")
        return "matches dpo_edu.losses.dpo_loss, stays finite at margins of +-1000, and gives ln 2 when policy == reference"

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
        got = _tensor(_call(weight, policy_chosen.detach().clone(), policy_rejected.clone(), ref_chosen.clone(), ref_rejected.clone(), beta),
                      expected, "gradient weight")
        margin = beta * ((policy_chosen.detach() - ref_chosen) - (policy_rejected - ref_rejected))
        slip = _first_matching_slip(got, {
            "your weights are largest for the pairs the policy already ranks right; they should be largest where it is wrong":
                torch.sigmoid(margin),
            "beta looks missing from the implicit rewards: your weights are those of beta = 1": torch.sigmoid(-margin / beta),
            "your weights are beta times too large: the exercise divides the gradient by beta": beta * expected,
        })
        if slip:
            raise _Wrong(slip)
        _close(got, expected, "gradient weight", atol=1e-8)
        return "sigmoid(r_hat_l - r_hat_w): largest for the pairs the policy gets wrong, as autograd agrees"

    return _verdict("gradient weight", body)


# --------------------------------------------------------------- 04 log-probs

def _summed_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log_softmax(logits)[label] over positions whose label is not -100, with no shift."""
    token_logps = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * (labels != -100)).sum(-1).to(logits.dtype)


def check_04_sequence_logprobs(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """function(logits (B, T, V), labels (B, T) with -100) -> (B,) summed next-token log-probs, finite even where
    a token's probability underflows to 0."""
    from .logprobs import sequence_logprobs

    def body() -> str:
        generator = torch.Generator().manual_seed(5)
        logits = 3 * torch.randn(3, 12, 50, generator=generator)
        labels = torch.randint(50, (3, 12), generator=generator)
        labels[:, :4] = -100
        labels[2, 9:] = -100
        expected = sequence_logprobs(logits, labels)
        got = _tensor(_call(function, logits.clone(), labels.clone()), expected, "sequence log-probs")
        slip = _first_matching_slip(got, {
            "looks unshifted: the logits at position t score the token at t + 1, not the one at t": _summed_token_logps(logits, labels),
            "looks shifted the wrong way: the logits at position t score the token at t + 1, not the one at t - 1":
                _summed_token_logps(logits[:, 1:], labels[:, :-1]),
            "looks like an average over tokens; the sequence log-prob is their sum": sequence_logprobs(logits, labels, average=True),
        })
        if slip:
            raise _Wrong(slip)
        _close(got, expected, "sequence log-probs", atol=1e-4)
        spread = logits[:2, :8].clone()
        spread[..., 0] += 200.0  # token 0 dominates; the labels' own probabilities underflow float32
        spread_labels = torch.randint(1, 50, (2, 8), generator=generator)
        _close(_call(function, spread.clone(), spread_labels.clone()), sequence_logprobs(spread, spread_labels),
               "sequence log-probs with a logit spread of 200", atol=1e-3, rtol=1e-5)
        return "shifted by one, masked, summed, in log space: equals dpo_edu.logprobs.sequence_logprobs"

    return _verdict("sequence log-probs", body)


def check_04_labels(make_labels: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """make_labels(input_ids (B, T), prompt_lengths (B,), attention_mask (B, T)) -> labels (B, T) with -100 on prompt and padding.

    The test rows hold real tokens whose id is 0 or equals the padding's id: only the attention mask tells padding apart.
    """

    def body() -> str:
        input_ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [1, 2, 3, 4, 5, 6, 7], [3, 0, 4, 0, 2, 2, 2]])
        attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
        prompt_lengths = torch.tensor([2, 4, 1])
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        in_prompt = positions < prompt_lengths.unsqueeze(1)
        expected = input_ids.masked_fill(in_prompt | (attention_mask == 0), -100)
        raw = _call(make_labels, input_ids.clone(), prompt_lengths.clone(), attention_mask.clone())
        if isinstance(raw, torch.Tensor) and raw.is_floating_point():
            raise _Wrong(f"got {raw.dtype} labels; labels are token ids, integers like input_ids")
        got = _tensor(raw, expected, "labels")
        response = ~in_prompt & (attention_mask == 1)
        masked = got == -100
        if torch.equal(got, input_ids.masked_fill(in_prompt | (input_ids == 0), -100)) or (response & masked & (input_ids == 0)).any():
            raise _Wrong("padding looks found by its id: here real tokens have id 0 and one row pads with id 2; "
                         "only the attention mask tells padding apart")
        if (in_prompt & ~masked).any():
            raise _Wrong("some prompt tokens are not -100: the loss must not score the prompt")
        if (response & masked & (positions == prompt_lengths.unsqueeze(1))).any():
            raise _Wrong("the first response token is -100: off by one where the prompt ends?")
        if (response & masked).any():
            raise _Wrong("a real response token (attention mask 1) became -100")
        if ((attention_mask == 0) & ~masked).any():
            raise _Wrong("some padding is not -100 (padding is where the attention mask is 0)")
        assert torch.equal(got, expected), "response tokens must keep their ids"
        return "prompt and padding masked with -100, response tokens kept, even those sharing the pad id"

    return _verdict("labels", body)


# ------------------------------------------------------------------ 05 bandit

def check_05_total_variation(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """function(p (..., K), q (..., K)) -> TV distance (...)."""
    from .bandit import total_variation

    def body() -> str:
        generator = torch.Generator().manual_seed(6)
        p = torch.softmax(torch.randn(4, 5, generator=generator, dtype=torch.float64), -1)
        q = torch.softmax(torch.randn(4, 5, generator=generator, dtype=torch.float64), -1)
        expected = total_variation(p, q)
        got = _tensor(_call(function, p.clone(), q.clone()), expected, "TV distance")
        if _matches(got, 2 * expected):
            raise _Wrong("exactly twice the TV distance, which lies between 0 and 1")
        _close(got, expected, "TV distance", atol=1e-10)
        _close(_call(function, p.clone(), p.clone()), torch.zeros(4, dtype=torch.float64), "TV(p, p)")
        return "half the L1 distance: 0 for equal policies, at most 1"

    return _verdict("total variation", body)


def check_05_ipo_ratio(ratio: Callable[[float, float, float], float]) -> bool:
    """ratio(ref_w, ref_l, beta) -> pi(y_w) / pi(y_l) where IPO settles when y_w always beats y_l (two responses)."""

    def body() -> str:
        for ref_w, ref_l, beta in ((0.2, 0.8, 1.0), (0.5, 0.5, 0.1), (0.7, 0.3, 0.25)):
            expected = ref_w / ref_l * math.exp(1 / (2 * beta))
            got = _number(_call(ratio, ref_w, ref_l, beta), f"ratio at ref=({ref_w}, {ref_l}), beta={beta}")
            if abs(got - expected) <= 1e-6 * expected:
                continue
            if math.isclose(got, expected * ref_l / ref_w, rel_tol=1e-6):
                raise _Wrong("the reference's own ratio pi_ref(y_w)/pi_ref(y_l) is missing: h is measured against the reference")
            if math.isclose(got, expected * (ref_l / ref_w) ** 2, rel_tol=1e-6):
                raise _Wrong("the reference's ratio looks upside down")
            raise _Wrong(f"ref=({ref_w}, {ref_l}), beta={beta}: got {got:.6g}; hint: where is IPO's loss (h - 1/(2 beta))^2 zero, and what is h?")
        return "pi_w/pi_l = (ref_w/ref_l) exp(1/(2 beta)): finite, unlike DPO's"

    return _verdict("IPO's fixed point", body)


# ---------------------------------------------------------------- 06 full run

def check_06_win_rate(function: Callable[[list, list], float]) -> bool:
    """function(policy_rewards, reference_rewards) -> the fraction of prompts the policy wins, ties counting 1/2.

    Any number type passes (Python, numpy, a float32 or float64 0-d tensor), within 1e-6.
    """
    from .evaluate import win_rate

    def body() -> str:
        generator = torch.Generator().manual_seed(6)
        for n in (1, 7, 50):
            # rewards on a coarse grid, so ties happen (VADER gives many exact zeros)
            policy = (torch.randint(-2, 3, (n,), generator=generator) / 2).tolist()
            reference = (torch.randint(-2, 3, (n,), generator=generator) / 2).tolist()
            got = _number(_call(function, list(policy), list(reference)), f"win rate ({n} prompts)")
            expected = win_rate(policy, reference)
            if math.isclose(got, expected, abs_tol=1e-6):
                continue
            wins = sum(p > r for p, r in zip(policy, reference))
            ties = sum(p == r for p, r in zip(policy, reference))
            slips = {
                "ties look like they count as losses; a tie counts one half": wins / n,
                "ties look like they count as wins; a tie counts one half": (wins + ties) / n,
                "that is a count of prompts, not a fraction of them": expected * n,
                "that looks like a percentage; return a fraction between 0 and 1": 100 * expected,
            }
            for hint, value in slips.items():
                if math.isclose(got, value, abs_tol=1e-6):
                    raise _Wrong(f"for {n} prompts: {hint}")
            raise _Wrong(f"for {n} prompts got {got:.4f}, expected {expected:.4f}")
        return "wins count 1, ties 1/2, losses 0"

    return _verdict("win rate", body)


def check_06_kl_estimate(function: Callable[[torch.Tensor, torch.Tensor], float]) -> bool:
    """function(policy_logps, reference_logps) -> KL(policy || reference) estimated from the policy's own samples.

    The test log-ratios have both signs, as real samples' do: only their average must be >= 0.
    """

    def body() -> str:
        generator = torch.Generator().manual_seed(7)
        reference_logps = -20 + 5 * torch.rand(64, generator=generator)
        log_ratios = 0.3 + torch.randn(64, generator=generator)  # mostly positive, some negative
        policy_logps = reference_logps + log_ratios
        got = _number(_call(function, policy_logps.clone(), reference_logps.clone()), "KL estimate")
        expected = log_ratios.mean().item()
        if math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6):
            return "the mean log-ratio over the policy's own samples"
        slips = {
            "the sign looks flipped: which of the two policies drew the samples, and so comes first in the KL?": -expected,
            "a sample's log-ratio can be negative; taking its absolute value biases the estimate upwards": log_ratios.abs().mean().item(),
            "negative log-ratios look clipped to 0; a sample's log-ratio can be negative, and the estimate must keep it":
                log_ratios.clamp_min(0).mean().item(),
            "that looks like a sum over the samples; an estimate of an expectation is an average": log_ratios.sum().item(),
        }
        for hint, value in slips.items():
            if math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6):
                raise _Wrong(hint)
        raise _Wrong(f"got {got:.4f}, which is not the estimate: the KL is an expectation under the policy of a log-ratio")

    return _verdict("KL estimate", body)


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


# ------------------------------------------ 03 DPO loss: what one step does

_03_STEP_QUANTITIES = ("log_pi_chosen", "log_pi_rejected", "h")
_03_STEP_ANSWERS = ("rises", "falls", "either")


def _03_random_step_instances(n: int = 200, seed: int = 8) -> Iterable[tuple]:
    """(features (K, D), theta (D,), ref_logps (K,), chosen, rejected): random log-linear policies softmax(features @ theta)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        features = torch.randn(5, 3, generator=generator, dtype=torch.float64)
        theta = torch.randn(3, generator=generator, dtype=torch.float64)
        ref_logps = torch.log_softmax(torch.randn(5, generator=generator, dtype=torch.float64), -1)
        yield features, theta, ref_logps, 0, 1


def _03_one_dpo_step(features, theta, ref_logps, chosen, rejected, beta=0.1, lr=1e-4) -> dict[str, float]:
    """One small SGD step on one pair's DPO loss: the changes of log pi(y_w), log pi(y_l) and h."""
    theta = theta.clone().requires_grad_(True)
    before = torch.log_softmax(features @ theta, -1)
    pick = lambda logps, index: logps[index].reshape(1)  # noqa: E731
    loss, _, _ = losses.dpo_loss(pick(before, chosen), pick(before, rejected), pick(ref_logps, chosen), pick(ref_logps, rejected), beta)
    (gradient,) = torch.autograd.grad(loss.sum(), theta)
    after = torch.log_softmax(features @ (theta.detach() - lr * gradient), -1)
    change = after - before.detach()
    return {"log_pi_chosen": change[chosen].item(), "log_pi_rejected": change[rejected].item(), "h": (change[chosen] - change[rejected]).item()}


def check_03_step_prediction(prediction: dict | None, chosen_rises: Callable[..., bool]) -> bool:
    """Predict, then diagnose, what one small DPO step does.

    prediction: {"log_pi_chosen" | "log_pi_rejected" | "h": "rises" | "falls" | "either"}, for every policy;
    chosen_rises(features, theta, chosen, rejected) -> bool: does a small step raise log pi(y_chosen)
    for the log-linear policy softmax(features @ theta)? The truth is computed: real DPO steps on
    random log-linear policies.
    """

    def body() -> str:
        if not isinstance(prediction, dict) or any(prediction.get(key) is None for key in _03_STEP_QUANTITIES):
            raise _NotAttempted
        instances = list(_03_random_step_instances())
        changes = [_03_one_dpo_step(*instance) for instance in instances]
        for key in _03_STEP_QUANTITIES:
            answer = prediction[key]
            if answer not in _03_STEP_ANSWERS:
                raise _Wrong(f"{key}: answer one of {', '.join(map(repr, _03_STEP_ANSWERS))}, not {answer!r}")
            signs = {change[key] > 0 for change in changes if abs(change[key]) > 1e-9}
            truth = "either" if len(signs) == 2 else "rises" if True in signs else "falls"
            if answer != truth:
                raise _Wrong(f"{key}: your prediction disagrees with what one small DPO step did on {len(changes)} random "
                             "log-linear policies; change the features in section 4's demo and watch this quantity")
        wrong = sum(bool(_call(chosen_rises, features, theta, chosen, rejected)) != (change["log_pi_chosen"] > 0)
                    for (features, theta, _, chosen, rejected), change in zip(instances, changes))
        if wrong:
            raise _Wrong(f"chosen_rises is wrong on {wrong} of {len(changes)} random log-linear policies; hint: a small step "
                         "moves theta along grad h - what does that do to log pi(y_w), to first order?")
        return "only h is sure to rise (to first order); log pi(y_w) falls whenever grad log pi(y_w) . grad h < 0"

    return _verdict("what a DPO step does", body)


# ------------------------------------------------------- 05 bandit: coverage

def _05_uncovered_instances() -> Iterable[tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, int, float]]:
    """Random bandits whose preferences (exact, all_pairs) never mention one response: (ref, data, weights, dropped, beta)."""
    generator = torch.Generator().manual_seed(505)
    for n_responses, dropped, beta in ((4, 3, 0.5), (6, 1, 0.2)):
        ref = torch.softmax(torch.randn(1, n_responses, generator=generator, dtype=torch.float64), -1)
        rewards = torch.randn(1, n_responses, generator=generator, dtype=torch.float64)
        prompts, chosen, rejected, weights = bandit.all_pairs(rewards)
        keep = (chosen != dropped) & (rejected != dropped)
        yield ref, (prompts[keep], chosen[keep], rejected[keep]), weights[keep], dropped, beta


def check_05_uncovered_response(predict: Callable[[torch.Tensor, int, float], float]) -> bool:
    """predict(policy, dropped, shift) -> pi(dropped) when the same DPO training starts with that logit raised by `shift`.

    policy: (K,) the tabular DPO policy trained from pi_ref on preferences in which response
    `dropped` appears in no pair. The truth is computed: the checker retrains (train_tabular_dpo
    with initial_logits) on random bandits, for shifts of both signs.
    """

    def body() -> str:
        _call(predict, torch.tensor([0.5, 0.5], dtype=torch.float64), 0, 0.0)  # a stub stops here, before any training
        for ref, data, weights, dropped, beta in _05_uncovered_instances():
            settings = dict(steps=200, learning_rate=0.1, record_every=200, weights=weights)
            policy, _ = bandit.train_tabular_dpo(ref, *data, beta, **settings)
            for shift in (2.0, -1.5):
                start = torch.log(ref).clone()
                start[0, dropped] += shift
                retrained, _ = bandit.train_tabular_dpo(ref, *data, beta, initial_logits=start, **settings)
                truth = retrained[0, dropped].item()
                got = _number(_call(predict, policy[0].clone(), dropped, shift), f"pi({dropped})")
                if abs(got - truth) <= 1e-6:
                    continue
                where = f"{ref.shape[1]} responses, response {dropped} in no pair, shift {shift:+}"
                if abs(got - policy[0, dropped].item()) <= 1e-9:
                    raise _Wrong(f"{where}: you predicted no change, but retraining moved pi({dropped}); do the data pin it down?")
                if abs(got - policy[0, dropped].item() * math.exp(shift)) <= 1e-9:
                    raise _Wrong(f"{where}: the other responses' probabilities must make room - a policy sums to 1")
                raise _Wrong(f"{where}: your prediction is {'too high' if got > truth else 'too low'}; "
                             f"hint: which logits does the loss's gradient reach, and do the others' updates depend on logit {dropped}?")
        return "the uncovered logit gets no gradient, so pi(k) is whatever the start and the normaliser make it"

    return _verdict("an uncovered response", body)


# ------------------------------------------------------------ 08 beyond DPO

def check_08_robust_loss(robust: Callable[..., torch.Tensor]) -> bool:
    """robust(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, eps) -> rDPO's per-pair losses (B,),
    (-(1-eps) log sigma(z) + eps log sigma(-z)) / (1 - 2 eps) with z = beta h; finite at margins of +-1000 in float32."""

    def body() -> str:
        logps = _random_logps(0)
        eps = 0.2
        expected = losses.dpo_loss(*logps, 0.1, loss_type="robust", label_smoothing=eps)[0]
        got = _tensor(_call(robust, *(logp.clone() for logp in logps), 0.1, eps), expected, "robust losses at beta=0.1, eps=0.2")
        z = 0.1 * ((logps[0] - logps[2]) - (logps[1] - logps[3]))
        slip = _first_matching_slip(got, {
            "these are cDPO's losses (label smoothing: - eps log sigma(-z)); the robust loss adds + eps log sigma(-z) "
            "and divides by 1 - 2 eps": -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z),
            "the division by 1 - 2 eps is missing: without it the expected loss under flipped labels is not the clean loss":
                -(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z),
            "the factor 1 - 2 eps multiplies instead of dividing": (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) * (1 - 2 * eps),
            "eps looks unused: these are plain DPO losses": -F.logsigmoid(z),
            "the weights look swapped: (1 - eps) belongs to log sigma(z), the label as given, and eps to the flipped label":
                (-eps * F.logsigmoid(z) + (1 - eps) * F.logsigmoid(-z)) / (1 - 2 * eps),
        })
        if slip:
            raise _Wrong(slip)
        for seed in (0, 1):
            logps = _random_logps(seed)
            for beta, eps in ((0.1, 0.1), (1.0, 0.3), (0.5, 0.0)):
                expected = losses.dpo_loss(*logps, beta, loss_type="robust", label_smoothing=eps)[0]
                _close(_call(robust, *(logp.clone() for logp in logps), beta, eps), expected, f"robust loss at beta={beta}, eps={eps}")
        extreme = _extreme_margin_logps()
        _close(_call(robust, *(logp.clone() for logp in extreme), 1.0, 0.2),
               losses.dpo_loss(*extreme, 1.0, loss_type="robust", label_smoothing=0.2)[0],
               "robust losses at margins of +-120 and +-1000 in float32", atol=1e-3, rtol=1e-6)
        return "the flipped-label term enters with a plus sign, and 1 / (1 - 2 eps) makes the expected loss the clean one"

    return _verdict("robust loss", body)


def _08_lengths(seed: int, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(3, 40, (batch,), generator=generator).to(torch.float64) for _ in range(2))


def check_08_simpo_loss(simpo: Callable[..., torch.Tensor]) -> bool:
    """simpo(policy_chosen, policy_rejected, chosen_lengths, rejected_lengths, beta, gamma) -> SimPO's per-pair losses (B,),
    -log sigma(beta (logp_w / |y_w| - logp_l / |y_l|) - gamma); no reference."""

    def body() -> str:
        policy_chosen, policy_rejected, _, _ = _random_logps(0)
        chosen_lengths, rejected_lengths = _08_lengths(0)
        beta, gamma = 2.0, 0.5
        expected = losses.dpo_loss(policy_chosen, policy_rejected, beta=beta, loss_type="simpo", simpo_gamma=gamma,
                                   chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)[0]
        got = _tensor(_call(simpo, policy_chosen.clone(), policy_rejected.clone(), chosen_lengths.clone(), rejected_lengths.clone(),
                            beta, gamma), expected, "SimPO losses at beta=2, gamma=0.5")
        average = policy_chosen / chosen_lengths - policy_rejected / rejected_lengths
        summed = policy_chosen - policy_rejected
        slip = _first_matching_slip(got, {
            "the log-probs are not divided by their lengths: SimPO compares per-token means": -F.logsigmoid(beta * summed - gamma),
            "gamma looks multiplied by beta: it is subtracted after the scaling, -log sigma(beta * margin - gamma)":
                -F.logsigmoid(beta * (average - gamma)),
            "gamma looks outside the log-sigmoid, where no gradient sees it": -F.logsigmoid(beta * average) - gamma,
            "gamma's sign looks flipped: the margin must exceed gamma, so gamma is subtracted": -F.logsigmoid(beta * average + gamma),
            "gamma looks unused": -F.logsigmoid(beta * average),
            "the lengths look swapped between chosen and rejected":
                -F.logsigmoid(beta * (policy_chosen / rejected_lengths - policy_rejected / chosen_lengths) - gamma),
        })
        if slip:
            raise _Wrong(slip)
        for seed in (0, 1):
            policy_chosen, policy_rejected, _, _ = _random_logps(seed)
            chosen_lengths, rejected_lengths = _08_lengths(seed)
            for beta, gamma in ((2.0, 1.0), (10.0, 0.0), (0.5, 0.3)):
                expected = losses.dpo_loss(policy_chosen, policy_rejected, beta=beta, loss_type="simpo", simpo_gamma=gamma,
                                           chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)[0]
                _close(_call(simpo, policy_chosen.clone(), policy_rejected.clone(), chosen_lengths.clone(), rejected_lengths.clone(),
                             beta, gamma), expected, f"SimPO loss at beta={beta}, gamma={gamma}")
        return "per-token mean log-probs, no reference, and the margin gamma subtracted inside the sigmoid"

    return _verdict("SimPO loss", body)


_08_NOISY_LOSSES = ("sigmoid", "cdpo", "robust")


def _08_learned_probability(p: float, eps: float, loss: str) -> float:
    noisy = (1 - eps) * p + eps * (1 - p)
    return {"sigmoid": noisy, "cdpo": (1 - eps) * noisy + eps * (1 - noisy), "robust": p}[loss]


def check_08_noisy_target(learned: Callable[[float, float, str], float]) -> bool:
    """learned(p, eps, loss) -> sigma(z*), the preference probability the minimiser of the expected loss encodes,
    for true probability p, labels flipped with probability eps, loss in ("sigmoid", "cdpo", "robust")."""

    def body() -> str:
        cases = [(p, eps) for p in (0.9, 0.7, 0.35) for eps in (0.1, 0.25)]
        answers = {loss: [_number(_call(learned, p, eps, loss), f"loss={loss!r}, p={p}, eps={eps}") for p, eps in cases]
                   for loss in _08_NOISY_LOSSES}
        for loss in _08_NOISY_LOSSES:
            for (p, eps), got in zip(cases, answers[loss]):
                truth = _08_learned_probability(p, eps, loss)
                if abs(got - truth) <= 1e-6:
                    continue
                where = f"loss={loss!r}, p={p}, eps={eps}"
                if abs(got - p) <= 1e-9:
                    raise _Wrong(f"{where}: that is the clean probability p; what do the flipped labels say, and does this loss undo them?")
                if abs(got - _08_learned_probability(p, eps, "sigmoid")) <= 1e-9:
                    raise _Wrong(f"{where}: that is the noisy labels' probability, where DPO lands; this loss treats the labels differently")
                if abs(got - _08_learned_probability(p, eps, "cdpo")) <= 1e-9:
                    raise _Wrong(f"{where}: that is cDPO's target (smoothed twice)")
                raise _Wrong(f"{where}: got {got:.4g}; hint: write the expected loss over the labels as a * (-log sigma(z)) "
                             "+ b * (-log sigma(-z)); its minimiser is sigma(z*) = a / (a + b)")
        return "DPO learns the noisy probability, cDPO smooths it again, the robust loss recovers the clean one"

    return _verdict("noisy-label targets", body)
