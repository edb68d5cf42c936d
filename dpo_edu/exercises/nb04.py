"""Checkers for notebook 04 (log-probs) exercises (see `dpo_edu.exercises`)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._checking import _call, _close, _first_matching_slip, _NotAttempted, _number, _tensor, _verdict, _Wrong

# --------------------------------------------------------------- 04 log-probs

def _summed_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log_softmax(logits)[label] over positions whose label is not -100, with no shift."""
    token_logps = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * (labels != -100)).sum(-1).to(logits.dtype)


def check_04_sequence_logprobs(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """function(logits (B, T, V), labels (B, T) with -100) -> (B,) summed next-token log-probs, finite even where
    a token's probability underflows to 0."""
    from ..logprobs import sequence_logprobs

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


# ------------------------------ 04 log-probs: predict what scoring the padding does

_04_DIRECTIONS = ("up", "down", "same")


def check_04_unmasked_padding(extra_terms: int, direction: str, logits: torch.Tensor, input_ids: torch.Tensor,
                              labels: torch.Tensor, attention_mask: torch.Tensor) -> bool:
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
            raise _Wrong("the attention mask keeps the padding out of attention, not out of the sum: only the labels "
                         "decide which terms are summed")
        if count == extra - 1:
            raise _Wrong("one term too few: the shift drops the last row of logits and the *first* label; which "
                         "padding position would have no label?")
        if count == extra + 1:
            raise _Wrong("one term too many: count the padding positions among the labels after the shift")
        if count != extra:
            raise _Wrong(f"extra_terms: got {count:g}; count the padding positions of row {row}")
        if answer != truth:
            raise _Wrong("every log-prob is at most 0: can adding terms raise a sum?")
        return (f"{extra} more terms, each a log-prob <= 0: row {row}'s sum falls by {-change:.2f} nats, and the "
                "attention mask cannot prevent it")

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

    def suspect(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_length: int) -> torch.Tensor:
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
        return ("A leaves the unpadded row alone and lowers the padded one; B raises both rows by their first "
                "response token's cost; C lowers both rows by the same amount, the cost of their shared prompt")

    return _verdict("three suspect log-prob functions", body)


# --------------------------------------------- 04b appendix: derive a bf16 bound

def _04b_bound_slips(largest_logit: float) -> dict[str, float]:
    bound = 2 * largest_logit * 2.0**-8
    return {
        "half of a bound: rounding moves both terms of log pi(y) = z_y - logsumexp(z)": bound / 2,
        "twice as loose as it need be: does rounding to nearest err by a whole unit in the last place, or by half?":
            bound * 2,
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
            hint = next((hint for hint, value in _04b_bound_slips(largest_logit).items()
                         if math.isclose(got, value, rel_tol=1e-6)), None)
            if hint is None and math.isclose(_number(_call(bound, 4 * largest_logit), "your bound"), got, rel_tol=1e-9):
                hint = "your bound does not grow with M: a logit's rounding error is relative to its size"
            if hint is None:
                hint = ("too small: some logit no larger than M rounds by more than that in bf16" if got < lowest else
                        "valid, but looser than bf16's rounding allows")
            raise _Wrong(f"at M = {largest_logit}: {hint}")
        return ("|z~ - z| <= 2^-8 |z| <= 2^-8 M for every logit (8 significant bits, round to nearest), and each of "
                "z_y and logsumexp(z) moves by at most that: 2 M / 256, about 0.23 nats for logits up to 30")

    return _verdict("bf16 error bound", body)
