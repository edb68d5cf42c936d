"""Checkers for notebook 00 (welcome) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from ._checking import _NotAttempted, _number, _random_logps, _verdict, _Wrong

# ---------------------------------------------------------------- 00 welcome

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
        step_one = [
            loss(chosen_logps, rejected_logps, chosen_logps.clone(), rejected_logps.clone(), beta)
            for beta in (0.1, 1.0)
        ]
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
        return (
            "a bug that only flips the margin's sign keeps a margin of 0 at 0: only the first step's direction "
            "exposes it"
        )

    return _verdict("sign bugs that pass the ln 2 check", body)


# Notebook 00's exercise "how much memory does a DPO step hold?": SmolLM2-135M-Instruct's parameter count
# (embeddings tied to the output layer, so counted once), from sum(p.numel() for p in model.parameters()).
SMOLLM2_PARAMETERS = 134_515_008
# float32 bytes per parameter that a plain DPO step holds, activations aside
_TRAINING_BYTES = {
    "the policy's weights": 4,
    "their gradients": 4,
    "AdamW's two running averages": 8,
    "the reference's weights": 4,
}


def _training_memory_slips(n_parameters: int) -> dict[str, float]:
    """Typical wrong answers (GB) and the mistake each one makes."""
    right = n_parameters * sum(_TRAINING_BYTES.values()) / 1e9
    per_parameter = {
        4: "that is one float32 copy of the weights; a training step holds more than the weights",
        8: "weights and gradients only: AdamW keeps a state for every trained parameter too",
        12: "AdamW keeps two running averages per trained parameter, not one",
        16: "the frozen reference model is missing: a DPO step needs its log-probs too",
        24: "the reference is frozen: it has no gradients",
        32: "the reference is frozen: it has neither gradients nor optimizer state",
    }
    slips = {n_parameters * size / 1e9: hint for size, hint in per_parameter.items()}
    slips[right * 1e9 / 2**30] = "that is in GiB (2^30 bytes); the exercise asks for GB (10^9 bytes)"
    slips[right / 2] = "half: the course keeps the weights, and so their gradients and AdamW's state, in float32"
    slips[right * 8] = "that counts bits, not bytes"
    slips[right * 1000] = "that looks like MB; the exercise asks for GB"
    return slips


def check_00_training_memory(gigabytes: float) -> bool:
    """GB (10^9 bytes) that a plain float32 DPO step on SmolLM2-135M-Instruct holds, activations aside: the policy's
    weights, their gradients, AdamW's two running averages, and the frozen reference's weights."""

    def body() -> str:
        if gigabytes is None:
            raise _NotAttempted
        got = _number(gigabytes, "memory in GB")
        bytes_per_parameter = sum(_TRAINING_BYTES.values())
        right = SMOLLM2_PARAMETERS * bytes_per_parameter / 1e9
        if abs(got / right - 1) <= 0.02:
            return (
                f"{bytes_per_parameter} bytes per parameter x {SMOLLM2_PARAMETERS:,} = {right:.2f} GB: "
                + ", ".join(f"{size} for {what}" for what, size in _TRAINING_BYTES.items())
                + "; notebook 06's trainer computes the reference log-probs once, before training, and so "
                "needs no reference copy while it trains"
            )
        for value, hint in _training_memory_slips(SMOLLM2_PARAMETERS).items():
            if abs(got / value - 1) <= 0.02:
                raise _Wrong(hint)
        direction = "too little" if got < right else "too much"
        raise _Wrong(
            f"got {got:.4g} GB, {direction}: list what a step keeps for every parameter (float32: 4 bytes "
            "each), add up the bytes, then multiply by the parameter count"
        )

    return _verdict("memory of a DPO step", body)
