"""Checkers for notebook 05 (the bandit) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .. import bandit
from ._checking import _call, _matches, _NotAttempted, _number, _tensor, _verdict, _Wrong

# ------------------------------------------------------- 05 bandit: coverage


def _05_uncovered_instances() -> Iterable[tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, int, float]]:
    """Random bandits whose preferences (exact, all_pairs) never mention one response.

    Yields (ref (1, K), (prompts, chosen, rejected), weights, dropped, beta)."""
    generator = torch.Generator().manual_seed(505)
    for n_responses, dropped, beta in ((4, 3, 0.5), (6, 1, 0.2)):
        ref = torch.softmax(torch.randn(1, n_responses, generator=generator, dtype=torch.float64), -1)
        rewards = torch.randn(1, n_responses, generator=generator, dtype=torch.float64)
        prompts, chosen, rejected, weights = bandit.all_pairs(rewards)
        keep = (chosen != dropped) & (rejected != dropped)
        yield ref, (prompts[keep], chosen[keep], rejected[keep]), weights[keep], dropped, beta


def check_05_uncovered_response(predict: Callable[[torch.Tensor, int, float], float]) -> bool:
    """predict(policy, dropped, shift) -> pi(dropped) when the same DPO training starts with that logit raised by
    `shift`.

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
                    raise _Wrong(
                        f"{where}: you predicted no change, but retraining moved pi({dropped}); "
                        "do the data pin it down?"
                    )
                if abs(got - policy[0, dropped].item() * math.exp(shift)) <= 1e-9:
                    raise _Wrong(f"{where}: the other responses' probabilities must make room - a policy sums to 1")
                raise _Wrong(
                    f"{where}: your prediction is {'too high' if got > truth else 'too low'}; "
                    "hint: which logits does the loss's gradient reach, and do the others' updates "
                    f"depend on logit {dropped}?"
                )
        return "the uncovered logit gets no gradient, so pi(k) is whatever the start and the normaliser make it"

    return _verdict("an uncovered response", body)


# ---------------------------------------- 05 bandit: two responses, noisy labels


def _05_two_response_limit(ref_a: float, p: float, beta: float) -> float:
    """pi(A) where DPO converges when A beats B in a fraction p of infinitely many comparisons."""
    return 1 / (1 + (1 - ref_a) / ref_a * ((1 - p) / p) ** (1 / beta))


_05_TWO_RESPONSE_CASES = ((0.3, 0.8, 0.5), (0.7, 0.35, 2.0), (0.5, 0.9, 0.2), (0.15, 0.6, 1.0), (0.6, 0.7, 0.3))


def check_05_two_response_limit(limit: Callable[[float, float, float], float]) -> bool:
    """limit(ref_a, p, beta) -> pi(A) where DPO converges on two responses, A beating B in a fraction p of the pairs.

    The truth is the closed form softmax(log pi_ref + s_hat/beta) with s_hat(A) - s_hat(B) = log(p / (1 - p));
    tests/test_exercises_05.py checks it against train_tabular_dpo on the exact (weighted) data.
    """

    def ratio_to_probability(ratio: float, ref_a: float) -> float:
        return 1 / (1 + (1 - ref_a) / ref_a / ratio)

    slips = {  # each a function of (ref_a, p, beta), with the hint it earns
        "beta is missing: your answer does not change with beta": lambda a, p, b: ratio_to_probability(p / (1 - p), a),
        "beta acts the wrong way round: a smaller beta must move the policy further from pi_ref": lambda a, p, b: (
            ratio_to_probability((p / (1 - p)) ** b, a)
        ),
        "pi_ref is missing: DPO's optimum is measured against the reference": lambda a, p, b: ratio_to_probability(
            (p / (1 - p)) ** (1 / b), 0.5
        ),
        "that looks like the ratio pi(A)/pi(B): return the probability pi(A)": lambda a, p, b: (
            a / (1 - a) * (p / (1 - p)) ** (1 / b)
        ),
        "your policy favours the response that loses more often": lambda a, p, b: ratio_to_probability(
            ((1 - p) / p) ** (1 / b), a
        ),
        "you used the win rate p as A's reward (that is IPO's target); DPO fits Bradley-Terry: which reward gap makes "
        "sigmoid(gap) = p?": lambda a, p, b: ratio_to_probability(math.exp((2 * p - 1) / b), a),
    }

    def body() -> str:
        answers = [
            _number(_call(limit, *case), f"pi(A) at ref_a={case[0]}, p={case[1]}, beta={case[2]}")
            for case in _05_TWO_RESPONSE_CASES
        ]
        truths = [_05_two_response_limit(*case) for case in _05_TWO_RESPONSE_CASES]
        if all(math.isclose(got, truth, rel_tol=1e-6) for got, truth in zip(answers, truths)):
            return "pi(A)/pi(B) = (pi_ref(A)/pi_ref(B)) (p/(1-p))^(1/beta): finite for 0 < p < 1, and 1 when p = 1"
        for hint, slip in slips.items():  # before the range: the ratio slip lies outside [0, 1]
            if all(math.isclose(got, slip(*case), rel_tol=1e-6) for got, case in zip(answers, _05_TWO_RESPONSE_CASES)):
                raise _Wrong(hint)
        if any(not 0 <= got <= 1 for got in answers):
            raise _Wrong("some answers lie outside [0, 1]; pi(A) is a probability")
        case, got, truth = next(
            (c, g, t)
            for c, g, t in zip(_05_TWO_RESPONSE_CASES, answers, truths)
            if not math.isclose(g, t, rel_tol=1e-6)
        )
        direction = "too high" if got > truth else "too low"
        raise _Wrong(
            f"at ref_a={case[0]}, p={case[1]}, beta={case[2]} your pi(A) is {direction}; hint:"
            " which reward gap does Bradley-Terry's maximum likelihood give two responses, and what does "
            "DPO's policy do with it?"
        )

    return _verdict("DPO's limit on two responses", body)


# ---------------------------------------------- 05 bandit: slips the checks miss

# One-line slips in notebook 05's `tabular_dpo_loss` (section 2). The checker runs each one.
SILENT_BUG_CANDIDATES = {
    "a": "policy_logps = logits (log_softmax left out)",
    "b": "beta * (chosen_logratios - rejected_logratios) becomes (chosen_logratios - rejected_logratios) / beta",
    "c": "-F.logsigmoid(beta * h) becomes -beta * F.logsigmoid(h)",
    "d": "chosen_logratios and rejected_logratios swapped",
    "e": "ref_logps becomes policy_logps.detach() (the reference is the policy itself)",
    "f": ".mean() becomes .sum()",
}
_05_BUG_BETAS = (0.3, 1.0, 3.0)


def _05_buggy_loss(label: str, logits: torch.Tensor, data: tuple[torch.Tensor, ...], beta: float) -> torch.Tensor:
    """Candidate `label`'s loss of softmax(logits) (1, K) on the exact weighted pairs `data` of 20,000 labels."""
    ref_logps, prompts, chosen, rejected, weights = data
    policy_logps = logits if label == "a" else torch.log_softmax(logits, -1)
    reference = policy_logps.detach() if label == "e" else ref_logps
    chosen_logratios = policy_logps[prompts, chosen] - reference[prompts, chosen]
    rejected_logratios = policy_logps[prompts, rejected] - reference[prompts, rejected]
    h = rejected_logratios - chosen_logratios if label == "d" else chosen_logratios - rejected_logratios
    losses = -beta * F.logsigmoid(h) if label == "c" else -F.logsigmoid(h / beta if label == "b" else beta * h)
    mean = (weights * losses).sum() / weights.sum()
    return 20_000 * mean if label == "f" else mean  # .sum() over 20,000 pairs


@functools.lru_cache(maxsize=1)
def _05_bugs_passing() -> dict[float, frozenset[str]]:
    """beta -> the candidates whose step-0 loss is ln 2 and whose policy ends within TV 0.03 of pi* (300 Adam steps)."""
    ref = torch.tensor([[0.35, 0.25, 0.20, 0.12, 0.08]], dtype=torch.float64)
    rewards = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5]], dtype=torch.float64)
    data = (torch.log(ref), *bandit.all_pairs(rewards))
    passing = {}
    for beta in _05_BUG_BETAS:
        passing[beta] = set()
        for label in SILENT_BUG_CANDIDATES:
            logits = torch.log(ref).requires_grad_(True)
            optimizer = torch.optim.Adam([logits], lr=0.1)
            first_loss = _05_buggy_loss(label, logits, data, beta).item()
            for _ in range(300):
                optimizer.zero_grad()
                _05_buggy_loss(label, logits, data, beta).backward()
                optimizer.step()
            target = bandit.optimal_policy(ref, rewards, beta)
            distance = bandit.total_variation(torch.softmax(logits.detach(), -1), target)
            if abs(first_loss - math.log(2)) < 1e-9 and distance.item() <= 0.03:
                passing[beta].add(label)
        passing[beta] = frozenset(passing[beta])
    return passing


def _05_letters(answer: object, what: str) -> set[str]:
    if isinstance(answer, str):
        letters = {letter for letter in answer.lower() if letter.isalpha()}
    elif isinstance(answer, Iterable):
        letters = {str(label).strip().lower() for label in answer}
    else:
        raise _Wrong(f"{what}: expected a set of the candidates' letters, got {type(answer).__name__}")
    unknown = letters - set(SILENT_BUG_CANDIDATES)
    if unknown:
        raise _Wrong(
            f"{what}: unknown label(s) {sorted(unknown)}; the candidates are {', '.join(SILENT_BUG_CANDIDATES)}"
        )
    return letters


def check_05_silent_bugs(
    pass_at_one_beta: Iterable[str] | str | None, pass_at_three_betas: Iterable[str] | str | None
) -> bool:
    """Which SILENT_BUG_CANDIDATES pass notebook 05's two checks (step-0 loss ln 2, final TV to pi* <= 0.03)
    when they are run at beta = 1 only, and when they are run at beta = 0.3, 1 and 3. The truth is computed:
    the checker trains every candidate."""

    def body() -> str:
        if pass_at_one_beta is None and pass_at_three_betas is None:
            raise _NotAttempted
        if pass_at_one_beta is None or pass_at_three_betas is None:
            raise _Wrong("answer both: the slips that pass at beta = 1, and those that pass at 0.3, 1 and 3")
        one = _05_letters(pass_at_one_beta, "at beta = 1")
        three = _05_letters(pass_at_three_betas, "at beta = 0.3, 1 and 3")
        if not three <= one:
            raise _Wrong(
                "your second set is not inside the first: a slip that passes at three values of beta "
                "passes at beta = 1 among them"
            )
        passing = _05_bugs_passing()
        truths = {
            "at beta = 1": (one, passing[1.0]),
            "at beta = 0.3, 1 and 3": (three, frozenset.intersection(*passing.values())),
        }
        for where, (answer, truth) in truths.items():
            hints = []
            if answer - truth:
                hints.append(f"{where}, at least one slip in your set fails a check")
            if truth - answer:
                hints.append(f"{where}, at least one slip you left out passes both checks")
            if hints:
                raise _Wrong(
                    "; ".join(hints) + " - for each slip, ask what its loss is at step 0 and where its minimum lies"
                )
        return (
            "only a survives everywhere (the normaliser cancels in h); b and c are right at beta = 1 only, d and e "
            "pass ln 2 but not the TV check, f passes the TV check (Adam ignores the loss's scale) but not ln 2"
        )

    return _verdict("slips the checks miss", body)


# ------------------------------ 05b appendix: IPO when only neighbours are compared

_05B_NEIGHBOUR_CASES = ((3, 0.5), (5, 2.0), (4, 0.25))


def _05b_neighbour_instances() -> Iterable[tuple[torch.Tensor, float]]:
    generator = torch.Generator().manual_seed(552)
    for n_responses, beta in _05B_NEIGHBOUR_CASES:
        yield torch.softmax(torch.randn(n_responses, generator=generator, dtype=torch.float64), -1), beta


def _05b_neighbour_limit(ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Where IPO settles when y+1 always beats y and only neighbours are compared, equally often: (K,) -> (K,)."""
    steps = torch.arange(len(ref), dtype=ref.dtype)
    return torch.softmax(torch.log(ref) + steps / (2 * beta), -1)


def check_05b_ipo_neighbours(policy: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """policy(ref (K,), beta) -> (K,): IPO's converged policy on the pairs (y+1 beats y), each equally often.

    The truth is the closed form (every neighbour margin h = 1/(2 beta) is reachable at once);
    tests/test_exercises_05.py checks it against train_tabular_dpo with loss_type="ipo".
    """

    def candidate(ref: torch.Tensor, spacing: float, sign: float = 1.0, use_ref: bool = True) -> torch.Tensor:
        """softmax(log ref + sign * spacing * y), or without the reference: (K,) -> (K,)."""
        steps = torch.arange(len(ref), dtype=ref.dtype)
        return torch.softmax((torch.log(ref) if use_ref else 0) + sign * spacing * steps, -1)

    def body() -> str:
        for ref, beta in _05b_neighbour_instances():
            expected = _05b_neighbour_limit(ref, beta)
            got = _tensor(_call(policy, ref.clone(), beta), expected, f"policy for K={len(ref)}, beta={beta}")
            if _matches(got, expected, atol=1e-9):
                continue
            where = f"K={len(ref)}, beta={beta}: "
            if abs(got.sum().item() - 1) > 1e-6:
                raise _Wrong(where + f"your policy sums to {got.sum().item():.4g}, not 1")
            n_responses = len(ref)
            slips = {
                "that is the spacing when every pair is compared equally often (section 6); here only neighbours are": candidate(
                    ref, 1 / (beta * n_responses)
                ),
                "the log-ratio steps are off by a factor: where exactly is (h - 1/(2 beta))^2 zero?": candidate(
                    ref, 1 / beta
                ),
                "pi_ref is missing: h measures log-ratios against the reference": candidate(
                    ref, 1 / (2 * beta), use_ref=False
                ),
                "the direction is reversed: y+1 beats y, so it should gain": candidate(ref, 1 / (2 * beta), -1.0),
                "that is DPO's limit (all mass on the top response); IPO's loss grows again beyond its target margin": torch.nn.functional.one_hot(
                    torch.tensor(n_responses - 1), n_responses
                ).to(ref.dtype),
            }
            hint = next((text for text, value in slips.items() if _matches(got, value, atol=1e-6)), None)
            raise _Wrong(
                where
                + (
                    hint
                    or "not IPO's minimum; hint: can every pair reach its target margin at once "
                    "here, unlike in section 1?"
                )
            )
        return "each neighbour pair reaches h = 1/(2 beta) exactly: pi(y) is proportional to pi_ref(y) exp(y/(2 beta))"

    return _verdict("IPO on neighbour pairs", body)


# --------------------------------------- 05b appendix: the slope of the frontier


def _05b_frontier_slope(ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> float:
    """dE[r]/dKL along the frontier at pi*_beta, by central differences in beta. ref, rewards: (K,)."""
    betas = torch.tensor([[beta * (1 - 1e-5)], [beta * (1 + 1e-5)]], dtype=torch.float64)
    reward, kl = bandit.reward_and_kl(bandit.optimal_policy(ref, rewards, betas), ref, rewards)
    return ((reward[1] - reward[0]) / (kl[1] - kl[0])).item()


def check_05b_frontier_slope(slope: Callable[[float], float]) -> bool:
    """slope(beta) -> the slope dE_pi[r]/dKL(pi || pi_ref) of the reward-KL frontier at the point of pi*_beta.

    The truth is measured: finite differences along pi*_beta on notebook 05's bandit and two random ones.
    """
    generator = torch.Generator().manual_seed(558)
    bandits = [
        (
            torch.tensor([0.35, 0.25, 0.20, 0.12, 0.08], dtype=torch.float64),
            torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], dtype=torch.float64),
        )
    ]
    bandits += [
        (
            torch.softmax(torch.randn(6, generator=generator, dtype=torch.float64), -1),
            torch.randn(6, generator=generator, dtype=torch.float64),
        )
        for _ in range(2)
    ]

    def body() -> str:
        for beta in (0.2, 1.0, 5.0):
            got = _number(_call(slope, beta), f"slope at beta={beta}")
            measured = [_05b_frontier_slope(ref, rewards, beta) for ref, rewards in bandits]
            if all(math.isclose(got, value, rel_tol=1e-4) for value in measured):
                continue
            truth = measured[0]
            if got <= 0:
                raise _Wrong(
                    f"beta={beta}: a slope of {got:.4g}; along the frontier, does more KL buy more reward or less?"
                )
            if math.isclose(got * truth, 1, rel_tol=1e-4) and beta != 1.0:
                raise _Wrong(
                    f"beta={beta}: upside down; is the frontier steeper near the origin (large beta) or "
                    "near its end (small beta)?"
                )
            ratio = got / truth
            if any(math.isclose(ratio, factor, rel_tol=1e-4) for factor in (2.0, 0.5, math.e, 1 / math.e)):
                raise _Wrong(f"beta={beta}: off by a constant factor; differentiate E[r] - beta KL at its maximum")
            direction = "too steep" if got > truth else "too flat"
            raise _Wrong(
                f"beta={beta}: your slope is {direction} there; hint: pi*_beta maximises"
                " E[r] - beta KL - what does that say about a small move along the frontier?"
            )
        return "the slope is beta itself: beta is the price of one nat of KL, paid in reward"

    return _verdict("the frontier's slope", body)
