"""Checkers for notebook 08 (beyond DPO) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from .. import losses
from ._checking import (
    _call,
    _NotAttempted,
    _number,
    _verdict,
    _Wrong,
)

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
        truth = {
            name: "runs away" if _08_runs_away(settings) else "bounded" for name, settings in BOUNDED_LOSSES_08.items()
        }
        too_hopeful = sum(answer[name] == "bounded" != truth[name] for name in truth)
        too_gloomy = sum(answer[name] == "runs away" != truth[name] for name in truth)
        if too_hopeful:
            raise _Wrong(
                f"{too_hopeful} of the losses you call bounded keep falling as the margin grows: for each, "
                "write its loss as a function of h with every label right, and ask whether its slope ever "
                "reaches 0 (mind the sign in front of eps log sigma(-beta h))"
            )
        if too_gloomy:
            raise _Wrong(
                f"{too_gloomy} of the losses you say run away stop at a finite margin: find where each "
                "one's slope in h is 0 (a target margin, a target probability, or a hinge that goes flat)"
            )
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
            raise _Wrong(
                f"eps={eps}: got {got:.4g}; write dL/dz with d/dz log sigma(z) = 1 - sigma(z) and "
                "d/dz log sigma(-z) = -sigma(z), then let sigma(z) run over (0, 1)"
            )
        return (
            "the slope never falls under eps / (1 - 2 eps): on one-label data rDPO keeps pushing, and its loss "
            "has no floor"
        )

    return _verdict("rDPO's weight floor", body)


# ------------------------------------------ 08: a registry that lost its labels (diagnose)

_08_LABELS = {"A": "rDPO", "B": "hinge", "C": "DPO", "D": "IPO", "E": "cDPO"}  # the fault the learner finds
_08_SUSPECT_SETTINGS = {
    "DPO": {"loss_type": "sigmoid"},
    "cDPO": {"loss_type": "sigmoid", "label_smoothing": 0.2},
    "rDPO": {"loss_type": "robust", "label_smoothing": 0.2},
    "IPO": {"loss_type": "ipo"},
    "hinge": {"loss_type": "hinge"},
}
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
            raise _Wrong(
                f"{len(wrong)} wrong among the losses that start at ln 2: they part at large margins, "
                "so probe them at h = +20 and h = -20 (is the loss >= 0 there? does it level off?)"
            )
        raise _Wrong(
            "the two that start at 1 are swapped: at beta = 0.5 they agree at h = 0, so probe them at a few "
            "positive margins"
        )

    return _verdict("mislabelled losses", body)
