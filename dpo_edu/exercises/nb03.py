"""Checkers for notebook 03 (the DPO loss) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .. import losses
from ._checking import (
    _call,
    _NotAttempted,
    _number,
    _random_logps,
    _verdict,
    _Wrong,
)

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
    loss, _, _ = losses.dpo_loss(
        pick(before, chosen), pick(before, rejected), pick(ref_logps, chosen), pick(ref_logps, rejected), beta
    )
    (gradient,) = torch.autograd.grad(loss.sum(), theta)
    after = torch.log_softmax(features @ (theta.detach() - lr * gradient), -1)
    change = after - before.detach()
    return {
        "log_pi_chosen": change[chosen].item(),
        "log_pi_rejected": change[rejected].item(),
        "h": (change[chosen] - change[rejected]).item(),
    }


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
                raise _Wrong(
                    f"{key}: your prediction disagrees with what one small DPO step did on {len(changes)} random "
                    "log-linear policies; change the features in section 4's demo and watch this quantity"
                )
        wrong = sum(
            bool(_call(chosen_rises, features, theta, chosen, rejected)) != (change["log_pi_chosen"] > 0)
            for (features, theta, _, chosen, rejected), change in zip(instances, changes)
        )
        if wrong:
            raise _Wrong(
                f"chosen_rises is wrong on {wrong} of {len(changes)} random log-linear policies; hint: a small step "
                "moves theta along grad h - what does that do to log pi(y_w), to first order?"
            )
        return "only h is sure to rise (to first order); log pi(y_w) falls whenever grad log pi(y_w) . grad h < 0"

    return _verdict("what a DPO step does", body)


# ------------------------------------------ 03 DPO loss: step 1 of every run (predict)

_03_FIRST_STEP_KEYS = ("loss", "margin", "slope")
_03_FIRST_STEP_BETAS = (0.1, 1.0)


def _03_first_step_truth(beta: float) -> dict[str, float]:
    """Loss, implicit reward margin and d loss / d log pi(y_w) of step 1 (policy == reference), from dpo_loss itself."""
    ref_chosen, ref_rejected = _random_logps(11, batch=8)[:2]
    policy_chosen = ref_chosen.clone().requires_grad_(True)
    loss, chosen_rewards, rejected_rewards = losses.dpo_loss(
        policy_chosen, ref_rejected.clone(), ref_chosen, ref_rejected, beta
    )
    (slope,) = torch.autograd.grad(loss.sum(), policy_chosen)  # pair i's loss depends on pair i's log-prob only
    return {
        "loss": loss.mean().item(),
        "margin": (chosen_rewards - rejected_rewards).mean().item(),
        "slope": slope.mean().item(),
    }


def _03_first_step_slip(key: str, got: float, truth: dict[str, float], beta: float) -> str:
    """The hint for a wrong step-1 prediction: the slip it matches, never the right value."""
    near = lambda value: abs(got - value) <= 5e-4 * max(1.0, abs(value))  # noqa: E731
    at = f"at beta={beta:g}, {key}"
    if key == "loss":
        slips = {
            0.0: "a policy equal to the reference has learnt nothing: what probability does it give y_w "
            "beating y_l, and what loss does that give?",
            0.5: "that is sigma(0), the preference probability; the loss is minus its log",
            -math.log(2): "a negative loss: the loss is MINUS a log-probability",
            beta * math.log(2): "beta multiplies the margin inside the sigmoid, not the loss",
            math.log(2) / beta: "beta multiplies the margin inside the sigmoid; it does not divide the loss",
        }
    elif key == "margin":
        slips = {}
    else:
        slips = {
            -truth["slope"]: "wrong sign: raising log pi(y_w) must lower the loss, so the slope is negative",
            0.0: "the loss is not at a minimum at the start: it keeps falling as the margin grows",
            truth["slope"] / beta: "beta looks missing: the chain rule through the margin beta * h brings a "
            "factor beta",
            2 * truth["slope"]: "d/dm (-log sigmoid(m)) = -sigmoid(-m): what is sigmoid at the start's margin?",
            truth["slope"] / 2: "off by a factor 2: d/dm (-log sigmoid(m)) = -sigmoid(-m), at the start's margin",
        }
    slip = next((hint for value, hint in slips.items() if near(value)), None)
    if slip:
        return f"{at}: {slip}"
    if key == "margin":
        return (
            f"{at}: the implicit reward margin is beta * h, h the difference of the two log-ratios "
            "log(pi_theta / pi_ref): what is each log-ratio when pi_theta == pi_ref?"
        )
    return f"{at}: not what the loss gives at step 1; write the loss as a function of the margin and evaluate it there"


def check_03_first_step(predictions: dict | None) -> bool:
    """Predict step 1 of every DPO run (policy == reference), at beta = 0.1 and at beta = 1.

    predictions: {0.1: {"loss": ..., "margin": ..., "slope": ...}, 1.0: {...}}, numbers typed in: the mean loss,
    the implicit reward margin r_hat_w - r_hat_l, and d loss / d log pi_theta(y_w) of one pair. The truth is
    computed with dpo_edu.losses.dpo_loss and autograd; 4 decimals suffice.
    """

    def body() -> str:
        if not isinstance(predictions, dict):
            if predictions is None:
                raise _NotAttempted
            raise _Wrong(f"expected a dict {{0.1: {{...}}, 1.0: {{...}}}}, got {type(predictions).__name__}")
        if all(
            value is None for answers in predictions.values() if isinstance(answers, dict) for value in answers.values()
        ):
            raise _NotAttempted
        if sorted(predictions) != sorted(_03_FIRST_STEP_BETAS):
            raise _Wrong(f"expected the betas {list(_03_FIRST_STEP_BETAS)} as keys, got {sorted(predictions)}")
        truths = {beta: _03_first_step_truth(beta) for beta in _03_FIRST_STEP_BETAS}
        swapped = all(
            isinstance(predictions[b], dict)
            and isinstance(predictions[b].get("slope"), (int, float))
            and abs(predictions[b]["slope"] - truths[o]["slope"]) <= 5e-4
            for b, o in zip(_03_FIRST_STEP_BETAS, reversed(_03_FIRST_STEP_BETAS))
        )
        if swapped:
            raise _Wrong("slope: your two betas' slopes look swapped: which beta gives the steeper start?")
        for beta in _03_FIRST_STEP_BETAS:
            answers = predictions[beta]
            if not isinstance(answers, dict) or set(answers) != set(_03_FIRST_STEP_KEYS):
                raise _Wrong(f"at beta={beta:g}: expected a dict with the keys {list(_03_FIRST_STEP_KEYS)}")
            for key in _03_FIRST_STEP_KEYS:
                if answers[key] is None:
                    raise _Wrong(f"at beta={beta:g}: {key} is still None; every value needs an answer")
                got = _number(answers[key], f"at beta={beta:g}, {key}")
                truth = truths[beta][key]
                if abs(got - truth) > 5e-4 * max(1.0, abs(truth)):
                    raise _Wrong(_03_first_step_slip(key, got, truths[beta], beta))
        return "every step 1 has margin 0 and loss ln 2 whatever beta; the slope -beta/2 is what beta changes"

    return _verdict("step 1 of a DPO run", body)


# ------------------------------------------ 03 DPO loss: four suspect implementations (diagnose)


def _03_margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


# Each fault, as the DPO loss it gives: dpo_loss's first four arguments ((B,) log-probs) and beta -> (B,) losses.
FAULTS_03 = {
    "correct": lambda pc, pr, rc, rr, beta: F.softplus(-_03_margin(pc, pr, rc, rr, beta)),
    "sign flipped": lambda pc, pr, rc, rr, beta: -F.logsigmoid(_03_margin(pr, pc, rr, rc, beta)),
    "log dropped": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (torch.exp(pc - rc) - torch.exp(pr - rr))),
    "references swapped": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rr) - (pr - rc))),
    "no reference": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)),
    "beta missing": lambda pc, pr, rc, rr, beta: -F.logsigmoid(_03_margin(pc, pr, rc, rr, 1.0)),
    "minus missing": lambda pc, pr, rc, rr, beta: F.logsigmoid(_03_margin(pc, pr, rc, rr, beta)),
}
_03_SUSPECT_FAULTS = {"A": "log dropped", "B": "references swapped", "C": "correct", "D": "sign flipped"}


def _03_suspect(fault: str) -> Callable[..., torch.Tensor]:
    def suspect(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
        """(B,) DPO losses - or not: that is the question."""
        return FAULTS_03[fault](policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)

    return suspect


def suspects_03() -> tuple[dict[str, Callable[..., torch.Tensor]], torch.Tensor]:
    """Four DPO loss functions to diagnose, and the probe pairs the notebook prints them on.

    Returns ({"A": loss, ...}, probe (4, 4) float64): each loss takes dpo_loss's first four arguments ((B,)
    log-probs) and beta and returns (B,) losses; probe's columns are (policy_chosen, policy_rejected, ref_chosen,
    ref_rejected) log-probs of four pairs: policy == reference, log-ratios (+1, 0), (+3, +2) and (0, +1).
    """
    probe = torch.tensor(
        [
            [-20.0, -30.0, -20.0, -30.0],
            [-19.0, -30.0, -20.0, -30.0],
            [-17.0, -28.0, -20.0, -30.0],
            [-20.0, -29.0, -20.0, -30.0],
        ],
        dtype=torch.float64,
    )
    return {name: _03_suspect(fault) for name, fault in _03_SUSPECT_FAULTS.items()}, probe


def _03_first_difference(fault: str, suspect_fault: str, beta: float) -> str:
    """Where the learner's diagnosis first disagrees with the suspect: a probe pair, or other inputs."""
    probe = suspects_03()[1].T
    diagnosed, actual = FAULTS_03[fault](*probe, beta), FAULTS_03[suspect_fault](*probe, beta)
    differs = ((diagnosed - actual).abs() > 1e-6).nonzero()
    if len(differs):
        return f"on pair {differs[0].item() + 1} of the table"
    return "once beta changes: call it with another beta"


def check_03_diagnosis(diagnosis: dict | None, beta: float = 0.1) -> bool:
    """diagnosis: {"A": fault, "B": ..., "C": ..., "D": ...}, each fault a key of FAULTS_03 ("correct" for none).

    The truth is the fault each of suspects_03()'s functions was built with; a wrong diagnosis is answered with
    the probe pair (at the notebook's beta) on which a loss with that fault would print something else.
    """

    def body() -> str:
        if diagnosis is None or (isinstance(diagnosis, dict) and all(value is None for value in diagnosis.values())):
            raise _NotAttempted
        if not isinstance(diagnosis, dict) or sorted(diagnosis) != sorted(_03_SUSPECT_FAULTS):
            raise _Wrong(f"expected a dict with one diagnosis for each suspect {sorted(_03_SUSPECT_FAULTS)}")
        problems = []
        for name, fault in sorted(diagnosis.items()):
            label = fault.strip().lower() if isinstance(fault, str) else fault
            if label not in FAULTS_03:
                problems.append(f"suspect {name}: {fault!r} is not one of {', '.join(map(repr, FAULTS_03))}")
            elif label != _03_SUSPECT_FAULTS[name]:
                what = "a correct DPO loss" if label == "correct" else f"a loss with the fault {label!r}"
                where = _03_first_difference(label, _03_SUSPECT_FAULTS[name], beta)
                problems.append(f"suspect {name}: {what} would print something else {where} - compute it there")
        if problems:  # the first, in full: the verdict is one line
            others = f" (and {len(problems) - 1} more of your diagnoses are wrong)" if len(problems) > 1 else ""
            raise _Wrong(problems[0] + others)
        return (
            "the ln 2 check at policy == reference catches only B; a pair ranked right must cost less than ln 2 "
            "(D fails), and the loss depends on the log-ratios only through h (A fails on pairs 2 and 3)"
        )

    return _verdict("four suspect DPO losses", body)
