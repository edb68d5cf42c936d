"""Notebook 04's exercises (predict what scoring the padding does, diagnose three broken log-prob functions) and
appendix 04b's (derive a bf16 bound): the right answer passes, a stub is "not attempted", and typical wrong answers
fail with a hint that does not give the answer."""
import math

import pytest
import torch

from dpo_edu import exercises as ex
from dpo_edu.logprobs import sequence_logprobs

RIGHT_DIAGNOSIS = {"A": "padding scored", "B": "seam", "C": "prompt scored"}
PROMPT_LENGTH = 3


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def _not_attempted(*args):
    raise NotImplementedError


def _batch():
    """Notebook 04's batch in miniature: two rows sharing a 3-token prompt, row 1 right-padded by 4 (pad id 2,
    which is also a real token of row 0)."""
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.tensor([[5, 6, 7, 2, 9, 10, 11, 12, 13, 14], [5, 6, 7, 8, 9, 2, 2, 2, 2, 2]])
    attention_mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :PROMPT_LENGTH] = -100
    logits = 3 * torch.randn(2, 10, 20, generator=generator)
    logits[1, :PROMPT_LENGTH] = logits[0, :PROMPT_LENGTH]  # a causal model sees the same prompt in both rows
    return logits, input_ids, labels, attention_mask


def test_unmasked_padding_accepts_the_right_prediction(capsys):
    result, out = _verdict(capsys, ex.check_04_unmasked_padding, 4, "down", *_batch())
    assert result is True and "correct" in out
    assert ex.check_04_unmasked_padding(4, " Down ", *_batch()) is True


def test_unmasked_padding_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_04_unmasked_padding, None, None, *_batch())
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("extra, direction, hint", [
    (3, "down", "one term too few"),
    (5, "down", "one term too many"),
    (0, "same", "not out of the sum"),
    (4, "same", "not out of the sum"),
    (4, "up", "can adding terms raise a sum"),
    (9, "down", "count the padding positions"),
    (4, "lower", "answer one of"),
])
def test_unmasked_padding_names_each_slip_without_the_answer(capsys, extra, direction, hint):
    result, out = _verdict(capsys, ex.check_04_unmasked_padding, extra, direction, *_batch())
    assert result is False and hint in out, out
    assert "4 more terms" not in out and "falls by" not in out, out


def test_unmasked_padding_needs_a_padded_batch(capsys):
    logits, input_ids, labels, _ = _batch()
    result, out = _verdict(capsys, ex.check_04_unmasked_padding, 4, "down", logits, input_ids, labels,
                           torch.ones_like(input_ids))
    assert result is False and "no padded row" in out


def test_suspects_have_the_faults_the_checker_expects():
    """Each suspect's numbers show its fault on the miniature batch: A moves only the padded row, down; B raises each
    row by its first response token's cost; C lowers both rows by their shared prompt's cost."""
    logits, input_ids, labels, attention_mask = _batch()
    right = sequence_logprobs(logits, labels)
    change = {name: suspect(logits, input_ids, attention_mask, PROMPT_LENGTH) - right
              for name, suspect in ex.suspects_04().items()}
    first_term = torch.log_softmax(logits[:, PROMPT_LENGTH - 1], -1).gather(-1, input_ids[:, PROMPT_LENGTH, None])
    assert abs(change["A"][0]) < 1e-5 < -change["A"][1]
    assert torch.allclose(change["B"], -first_term.squeeze(-1), atol=1e-5)
    assert change["C"][0] < 0 and torch.allclose(change["C"][0], change["C"][1], atol=1e-5)


def test_logprob_faults_accepts_the_right_diagnosis(capsys):
    result, out = _verdict(capsys, ex.check_04_logprob_faults, RIGHT_DIAGNOSIS)
    assert result is True and "correct" in out
    assert ex.check_04_logprob_faults({name: f" {fault.upper()}" for name, fault in RIGHT_DIAGNOSIS.items()})


def test_logprob_faults_not_attempted(capsys):
    for stub in (None, {"A": None, "B": None, "C": None}):
        result, out = _verdict(capsys, ex.check_04_logprob_faults, stub)
        assert result is None and "not attempted" in out


@pytest.mark.parametrize("changes, hint", [
    ({"A": "prompt scored", "C": "padding scored"}, "suspect A: not 'prompt scored'"),
    ({"B": "no shift"}, "suspect B: not 'no shift'"),
    ({"B": "mean"}, "divide each row's sum"),
    ({"C": "seam"}, "raising each sum"),
    ({"A": "padding"}, "is not one of"),
])
def test_logprob_faults_names_each_slip_without_the_answer(capsys, changes, hint):
    result, out = _verdict(capsys, ex.check_04_logprob_faults, {**RIGHT_DIAGNOSIS, **changes})
    assert result is False and hint in out, out
    for name, fault in RIGHT_DIAGNOSIS.items():
        if name in changes:
            assert f"suspect {name}: {fault!r}" not in out and f"{name} is {fault!r}" not in out, out


def test_logprob_faults_rejects_a_malformed_answer(capsys):
    for answer in ({"A": "seam"}, ["padding scored", "seam", "prompt scored"]):
        result, out = _verdict(capsys, ex.check_04_logprob_faults, answer)
        assert result is False and "expected a dict with one fault for each suspect" in out


def right_bound(largest_logit):
    return 2 * largest_logit * 2.0**-8


def test_bf16_bound_accepts_the_derivation_and_holds(capsys):
    result, out = _verdict(capsys, ex.check_04b_bf16_bound, right_bound)
    assert result is True and "correct" in out
    generator = torch.Generator().manual_seed(0)
    logits = 30 * torch.rand(64, 500, generator=generator) * torch.randn(64, 500, generator=generator).sign()
    exact, rounded = torch.log_softmax(logits, -1), torch.log_softmax(logits.bfloat16().float(), -1)
    assert ((rounded - exact).abs().amax(-1) <= right_bound(logits.abs().amax(-1))).all()


def test_bf16_bound_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_04b_bf16_bound, _not_attempted)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("bound, hint", [
    (lambda m: m * 2.0**-8, "half of a bound"),
    (lambda m: 4 * m * 2.0**-8, "twice as loose"),
    (lambda m: 2 * m * 2.0**-24, "float32's rounding"),
    (lambda m: 2 * m * 2.0**-11, "float16's rounding"),
    (lambda m: 2 * m * 2.0**-16, "whole bf16 number"),
    (lambda m: 0.23, "does not grow with M"),
])
def test_bf16_bound_names_each_slip_without_the_answer(capsys, bound, hint):
    result, out = _verdict(capsys, ex.check_04b_bf16_bound, bound)
    assert result is False and hint in out, out
    assert "2^-8" not in out and "/ 256" not in out and "/256" not in out, out
