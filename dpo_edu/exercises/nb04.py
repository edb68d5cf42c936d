"""Checkers for notebook 04 (log-probs) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._checking import _call, _NotAttempted, _number, _verdict, _Wrong

# ------------------------------ 04 log-probs: predict what scoring the padding does

_04_DIRECTIONS = ("up", "down", "same")


def check_04_unmasked_padding(
    extra_terms: int,
    direction: str,
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
) -> bool:
    """Predict what happens to the padded row's sequence log-prob if its padding were scored (labels keep the token
    ids where attention_mask is 0): extra_terms, how many more terms its sum gets; direction, "up", "down" or
    "same". logits (B, T, V), input_ids, labels and attention_mask (B, T) are the notebook's batch; the truth is
    computed on them."""
    from ..logprobs import sequence_logprobs

    def body() -> str:
        if extra_terms is None and direction is None:
            raise _NotAttempted
        padded_rows = (attention_mask == 0).any(-1).nonzero().flatten()
        if len(padded_rows) == 0:
            raise _Wrong("this batch has no padded row: pass the notebook's batch_* tensors")
        row = padded_rows[0].item()
        scored_labels = torch.where(attention_mask == 0, input_ids, labels)
        extra = int(((scored_labels[row, 1:] != -100) & (labels[row, 1:] == -100)).sum())
        change = (sequence_logprobs(logits, scored_labels) - sequence_logprobs(logits, labels))[row].item()
        truth = "down" if change < 0 else "up" if change > 0 else "same"
        if not isinstance(direction, str) or direction.strip().lower() not in _04_DIRECTIONS:
            raise _Wrong(f"direction: answer one of {', '.join(map(repr, _04_DIRECTIONS))}, not {direction!r}")
        answer = direction.strip().lower()
        count = _number(extra_terms, "extra_terms")
        if count == 0 or answer == "same":
            raise _Wrong(
                "the attention mask keeps the padding out of attention, not out of the sum: only the labels "
                "decide which terms are summed"
            )
        if count == extra - 1:
            raise _Wrong(
                "one term too few: the shift drops the last row of logits and the *first* label; which "
                "padding position would have no label?"
            )
        if count == extra + 1:
            raise _Wrong("one term too many: count the padding positions among the labels after the shift")
        if count != extra:
            raise _Wrong(f"extra_terms: got {count:g}; count the padding positions of row {row}")
        if answer != truth:
            raise _Wrong("every log-prob is at most 0: can adding terms raise a sum?")
        return (
            f"{extra} more terms, each a log-prob <= 0: row {row}'s sum falls by {-change:.2f} nats, and the "
            "attention mask cannot prevent it"
        )

    return _verdict("padding left in the sum", body)


# ------------------------------------- 04 log-probs: diagnose three suspects

FAULTS_04 = {
    "prompt scored": "the prompt's tokens are scored too",
    "padding scored": "the padding is scored too",
    "seam": "the prompt mask covers one token too many: the response's first token is not scored",
    "no shift": "the logits at position t score the token at t, not the one at t + 1",
    "mean": "the mean of the scored tokens' log-probs, not their sum",
}
_04_SUSPECT_FAULTS = {"A": "padding scored", "B": "seam", "C": "prompt scored"}
# what a function with each fault does to the sums, to compare with a suspect's numbers
_04_FAULT_EFFECTS = {
    "prompt scored": "it would add the prompt's terms to every row, lowering rows that share a prompt by the same "
    "amount",
    "padding scored": "it would change only the padded rows, and lower them",
    "seam": "it would drop one term from every row, raising each sum by that token's cost",
    "no shift": "it would change every row by many nats (section 2's 'unshifted' line)",
    "mean": "it would divide each row's sum by its number of scored tokens (section 3)",
}


def _04_suspect(fault: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]:
    from ..logprobs import sequence_logprobs

    def suspect(
        logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> torch.Tensor:
        """logits (B, T, V), input_ids and attention_mask (B, T), right-padded, each row's prompt prompt_length
        tokens long -> (B,) sequence log-probs of the responses."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        in_prompt = positions < prompt_length + (fault == "seam")
        if fault == "prompt scored":
            in_prompt = torch.zeros_like(in_prompt)
        padding = (attention_mask == 0) & (fault != "padding scored")
        return sequence_logprobs(logits, input_ids.masked_fill(in_prompt | padding, -100))

    return suspect


def suspects_04() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]]:
    """Three functions, A to C, from a batch (logits, input_ids, attention_mask, prompt_length) to its (B,) sequence
    log-probs; each has one fault from FAULTS_04. Diagnose them from their outputs, not from this file."""
    return {name: _04_suspect(fault) for name, fault in _04_SUSPECT_FAULTS.items()}


def check_04_logprob_faults(diagnosis: dict | None) -> bool:
    """diagnosis: {"A": fault, "B": ..., "C": ...}, each fault a key of FAULTS_04. The truth is the fault each of
    suspects_04()'s functions was built with; a wrong diagnosis is answered with what that fault would do."""

    def body() -> str:
        if diagnosis is None or (isinstance(diagnosis, dict) and all(value is None for value in diagnosis.values())):
            raise _NotAttempted
        if not isinstance(diagnosis, dict) or sorted(diagnosis) != sorted(_04_SUSPECT_FAULTS):
            raise _Wrong(f"expected a dict with one fault for each suspect {sorted(_04_SUSPECT_FAULTS)}")
        problems = []
        for name, fault in sorted(diagnosis.items()):
            label = fault.strip().lower() if isinstance(fault, str) else fault
            if label not in FAULTS_04:
                problems.append(f"suspect {name}: {fault!r} is not one of {', '.join(map(repr, FAULTS_04))}")
            elif label != _04_SUSPECT_FAULTS[name]:
                problems.append(f"suspect {name}: not {label!r}: {_04_FAULT_EFFECTS[label]}; compare with its numbers")
        if problems:  # the first, in full: the verdict is one line
            others = f" (and {len(problems) - 1} more of your diagnoses are wrong)" if len(problems) > 1 else ""
            raise _Wrong(problems[0] + others)
        return (
            "A leaves the unpadded row alone and lowers the padded one; B raises both rows by their first "
            "response token's cost; C lowers both rows by the same amount, the cost of their shared prompt"
        )

    return _verdict("three suspect log-prob functions", body)


# --------------------------------------------- 04b appendix: derive a bf16 bound


def _04b_bound_slips(largest_logit: float) -> dict[str, float]:
    bound = 2 * largest_logit * 2.0**-8
    return {
        "half of a bound: rounding moves both terms of log pi(y) = z_y - logsumexp(z)": bound / 2,
        "twice as loose as it need be: does rounding to nearest err by a whole unit in the last place, or by half?": bound
        * 2,
        "that is float32's rounding (24 significant bits), not bf16's": bound * 2.0**-16,
        "that is float16's rounding (11 significant bits), not bf16's": bound * 2.0**-3,
        "16 bits are the whole bf16 number: its sign and exponent take 9 of them": bound * 2.0**-8,
    }


def check_04b_bf16_bound(bound: Callable[[float], float]) -> bool:
    """bound(M) -> the largest |log pi~(y_t) - log pi(y_t)| that rounding a row of logits to bf16 can cause, for
    a row whose largest |logit| is M, derived from bf16's precision and section 3's two-term argument. Accepted:
    any bound that holds for every rounding (at least twice half a bf16 unit in the last place at M's binade) and is
    no looser than 2 M 2^-8."""

    def body() -> str:
        for largest_logit in (30.0, 1.0, 0.75, 3.7, 47.5, 100.0):
            got = _number(_call(bound, largest_logit), f"your bound at M = {largest_logit}")
            lowest = 2 * 2.0 ** (math.floor(math.log2(largest_logit)) - 8)  # twice half an ulp in M's binade
            highest = 2 * largest_logit * 2.0**-8
            if lowest * (1 - 1e-9) <= got <= highest * (1 + 1e-9):
                continue
            hint = next(
                (
                    hint
                    for hint, value in _04b_bound_slips(largest_logit).items()
                    if math.isclose(got, value, rel_tol=1e-6)
                ),
                None,
            )
            if hint is None and math.isclose(_number(_call(bound, 4 * largest_logit), "your bound"), got, rel_tol=1e-9):
                hint = "your bound does not grow with M: a logit's rounding error is relative to its size"
            if hint is None:
                hint = (
                    "too small: some logit no larger than M rounds by more than that in bf16"
                    if got < lowest
                    else "valid, but looser than bf16's rounding allows"
                )
            raise _Wrong(f"at M = {largest_logit}: {hint}")
        return (
            "|z~ - z| <= 2^-8 |z| <= 2^-8 M for every logit (8 significant bits, round to nearest), and each of "
            "z_y and logsumexp(z) moves by at most that: 2 M / 256, about 0.23 nats for logits up to 30"
        )

    return _verdict("bf16 error bound", body)
