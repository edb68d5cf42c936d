"""Checkers for notebook 08 (beyond DPO) exercises (see `dpo_edu.exercises`)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .. import losses
from ._checking import (
    _NotAttempted,
    _call,
    _close,
    _extreme_margin_logps,
    _first_matching_slip,
    _number,
    _random_logps,
    _tensor,
    _verdict,
    _Wrong,
)

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


# ------------------------------------- 08: which losses stay bounded on one-label data (predict)

# Each loss as section 2 trains it on deterministic preferences (the label always right); eps = 0.1 where needed.
BOUNDED_LOSSES_08 = {
    "DPO": {"loss_type": "sigmoid"},
    "IPO": {"loss_type": "ipo"},
    "cDPO": {"loss_type": "sigmoid", "label_smoothing": 0.1},
    "rDPO": {"loss_type": "robust", "label_smoothing": 0.1},
    "hinge": {"loss_type": "hinge"},
}
_08_VERDICTS = ("bounded", "runs away")


def _08_runs_away(settings: dict, beta: float = 1.0) -> bool:
    """Whether a pair's loss keeps falling however large its margin: dL/dh < 0 at every h in [0, 20 / beta]."""
    h = torch.linspace(0.0, 20.0 / beta, 2001, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros_like(h)
    (slope,) = torch.autograd.grad(losses.dpo_loss(h, zero, zero, zero, beta, **settings)[0].sum(), h)
    return bool((slope < 0).all())


def _08_keys(answer: Any, names: Sequence[str], what: str) -> dict:
    """The learner's dict with exactly the keys `names`; _NotAttempted while every value is None."""
    if not isinstance(answer, dict):
        raise _Wrong(f"expected a dict {{{', '.join(repr(name) for name in names)}: ...}}, got {type(answer).__name__}")
    if set(answer) != set(names):
        raise _Wrong(f"expected exactly the keys {list(names)}, got {list(answer)}")
    if all(value is None for value in answer.values()):
        raise _NotAttempted
    for key, value in answer.items():
        if value is None:
            raise _Wrong(f"{key!r} is still None: give {what} for every key")
    return answer


def check_08_bounded(prediction: dict) -> bool:
    """prediction: {"DPO" | "IPO" | "cDPO" | "rDPO" | "hinge": "bounded" or "runs away"}, for training on preferences
    whose label is always right (the better response always wins). The truth is computed here: a loss runs away
    when its slope in the margin h never reaches 0."""

    def body() -> str:
        answer = _08_keys(prediction, list(BOUNDED_LOSSES_08), f"one of {_08_VERDICTS}")
        for name, verdict in answer.items():
            if verdict not in _08_VERDICTS:
                raise _Wrong(f"{name}: {verdict!r} is not one of {_08_VERDICTS}")
        truth = {name: "runs away" if _08_runs_away(settings) else "bounded"
                 for name, settings in BOUNDED_LOSSES_08.items()}
        too_hopeful = sum(answer[name] == "bounded" != truth[name] for name in truth)
        too_gloomy = sum(answer[name] == "runs away" != truth[name] for name in truth)
        if too_hopeful:
            raise _Wrong(f"{too_hopeful} of the losses you call bounded keep falling as the margin grows: for each, "
                         "write its loss as a function of h with every label right, and ask whether its slope ever "
                         "reaches 0 (mind the sign in front of eps log sigma(-beta h))")
        if too_gloomy:
            raise _Wrong(f"{too_gloomy} of the losses you say run away stop at a finite margin: find where each "
                         "one's slope in h is 0 (a target margin, a target probability, or a hinge that goes flat)")
        return "a loss stays bounded only if its slope in the margin reaches 0 at a finite margin"

    return _verdict("bounded or not", body)


# -------------------------------------------------- 08: rDPO's push never stops (derive)

def check_08_rdpo_floor(floor: Callable[[float], float]) -> bool:
    """floor(eps) -> the smallest |dL/dz| of rDPO's loss, over all z = beta h, on a pair whose label is right:
    eps / (1 - 2 eps), reached as z -> infinity (DPO's own weight, 1 - sigma(z), falls to 0)."""

    def body() -> str:
        for eps in (0.1, 0.25, 0.05, 0.4, 0.3):
            got = _number(_call(floor, eps), f"floor at eps={eps}")
            truth = eps / (1 - 2 * eps)
            if math.isclose(got, truth, rel_tol=1e-6, abs_tol=1e-9):
                continue
            slips = {
                "the division by 1 - 2 eps is missing": eps,
                "that is divided by 1 - eps; the robust loss is divided by 1 - 2 eps": eps / (1 - eps),
                "the factor 1 - 2 eps multiplies instead of dividing": eps * (1 - 2 * eps),
                "that is the weight far on the wrong side (z -> -infinity); the floor is where the pair is most surely "
                "right": (1 - eps) / (1 - 2 * eps),
                "that is the weight at z = 0, a fresh pair; where along z is the weight smallest?": 0.5 / (1 - 2 * eps),
                "0 is DPO's floor (1 - sigma(z) -> 0); in rDPO the flipped-label term enters with a plus sign": 0.0,
                "a weight here is the size of the slope, |dL/dz|, a positive number": -truth,
            }
            for hint, value in slips.items():
                if math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
                    raise _Wrong(f"eps={eps}: {hint}")
            raise _Wrong(f"eps={eps}: got {got:.4g}; write dL/dz with d/dz log sigma(z) = 1 - sigma(z) and "
                         "d/dz log sigma(-z) = -sigma(z), then let sigma(z) run over (0, 1)")
        return ("the slope never falls under eps / (1 - 2 eps): on one-label data rDPO keeps pushing, and its loss "
                "has no floor")

    return _verdict("rDPO's weight floor", body)


# ------------------------------------------ 08: a registry that lost its labels (diagnose)

_08_LABELS = {"A": "rDPO", "B": "hinge", "C": "DPO", "D": "IPO", "E": "cDPO"}  # the fault the learner finds
_08_SUSPECT_SETTINGS = {"DPO": {"loss_type": "sigmoid"}, "cDPO": {"loss_type": "sigmoid", "label_smoothing": 0.2},
                        "rDPO": {"loss_type": "robust", "label_smoothing": 0.2}, "IPO": {"loss_type": "ipo"},
                        "hinge": {"loss_type": "hinge"}}
_08_STARTS_AT_LN2 = {"DPO", "cDPO", "rDPO"}


def _suspect(settings: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(h: torch.Tensor) -> torch.Tensor:
        """Per-pair losses (B,) at margins h (B,), beta = 0.5."""
        h = torch.as_tensor(h, dtype=torch.float64)
        zero = torch.zeros_like(h)
        return losses.dpo_loss(h, zero, zero, zero, 0.5, **settings)[0]

    return loss


SUSPECTS_08 = {label: _suspect(_08_SUSPECT_SETTINGS[name]) for label, name in _08_LABELS.items()}


def check_08_diagnosis(diagnosis: dict) -> bool:
    """diagnosis: {"A" .. "E": the variant each of SUSPECTS_08 computes, one of DPO, cDPO, rDPO, IPO, hinge}."""

    def body() -> str:
        answer = _08_keys(diagnosis, list(_08_LABELS), f"one of {sorted(_08_SUSPECT_SETTINGS)}")
        for label, name in answer.items():
            if name not in _08_SUSPECT_SETTINGS:
                raise _Wrong(f"{label}: {name!r} is not one of {sorted(_08_SUSPECT_SETTINGS)}")
        if len(set(answer.values())) < len(answer):
            raise _Wrong("each of the five variants computes exactly one of the suspects: a name appears twice")
        wrong = [label for label in _08_LABELS if answer[label] != _08_LABELS[label]]
        if not wrong:
            return "the value at h = 0 sorts them into two groups; large margins of both signs tell each group apart"
        if any((answer[label] in _08_STARTS_AT_LN2) != (_08_LABELS[label] in _08_STARTS_AT_LN2) for label in wrong):
            raise _Wrong("a suspect is named after a loss that starts elsewhere: evaluate each one at h = 0 first")
        if any(_08_LABELS[label] in _08_STARTS_AT_LN2 for label in wrong):
            raise _Wrong(f"{len(wrong)} wrong among the losses that start at ln 2: they part at large margins, "
                         "so probe them at h = +20 and h = -20 (is the loss >= 0 there? does it level off?)")
        raise _Wrong("the two that start at 1 are swapped: at beta = 0.5 they agree at h = 0, so probe them at a few "
                     "positive margins")

    return _verdict("mislabelled losses", body)
