"""Every exercise checker rejects the mistakes learners make and accepts right answers.

A rejection is one printed line naming the problem and a returned False; a
checker never raises, whatever the learner's function returns or raises.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpo_edu import exercises as ex

VOCAB_SIZE, LENGTH = 49_152, 1000


def check_log10_sequences(value):
    return ex.check_02_log10_sequences(value, VOCAB_SIZE, LENGTH)


def returns_none(*args):
    """A function whose author computed the answer and forgot `return`."""
    answer = args[0]  # noqa: F841


# ------------------------------------------------------------ right answers

def dpo_margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


def right_stable_probability(chosen, rejected):
    largest = torch.maximum(chosen, rejected)
    exp_chosen, exp_rejected = torch.exp(chosen - largest), torch.exp(rejected - largest)
    return exp_chosen / (exp_chosen + exp_rejected)


def right_optimal_policy(ref_probs, rewards, beta):
    logits = ref_probs.log() + rewards / beta
    return torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))


def right_sequence_logprobs(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * (labels != -100)).sum(-1)


def cross_entropy_sequence_logprobs(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return -per_token.sum(-1)


def right_labels(input_ids, prompt_lengths, attention_mask):
    in_prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]
    return input_ids.masked_fill(in_prompt | (attention_mask == 0), -100)


def right_win_rate(policy, reference):
    scores = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy, reference)]
    return sum(scores) / len(scores)


def float32_win_rate(policy, reference):
    policy, reference = torch.tensor(policy, dtype=torch.float32), torch.tensor(reference, dtype=torch.float32)
    return (policy > reference).float().mean() + 0.5 * (policy == reference).float().mean()


def step_one_losses_equal_ln2():
    """The sign-bug exercise's answer, computed here independently of the checker."""
    logps = [-20 * torch.rand(32, dtype=torch.float64) for _ in range(2)]
    pc, pr, rc, rr = logps[0], logps[1], logps[0].clone(), logps[1].clone()
    candidates = {
        "a": -F.logsigmoid(0.1 * ((pr - rr) - (pc - rc))),
        "b": -F.logsigmoid(0.1 * ((rc - pc) - (rr - pr))),
        "c": F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))),
        "d": -F.logsigmoid(0.1 * (pc - pr)),
    }
    return {label for label, loss in candidates.items() if torch.allclose(loss, torch.full_like(loss, math.log(2)))}


RIGHT = [
    (ex.check_00_device_order, "if-chain", lambda cuda, mps: "cuda" if cuda else "mps" if mps else "cpu"),
    (ex.check_00_initial_dpo_loss, "math", -math.log(1 / (1 + math.exp(-0.1 * 0.0)))),
    (ex.check_00_initial_dpo_loss, "float32 logsigmoid tensor", -F.logsigmoid(torch.tensor(0.0))),
    (ex.check_00_sign_bugs, "computed set", step_one_losses_equal_ln2()),
    (ex.check_00_sign_bugs, "list of capitals", [label.upper() for label in sorted(step_one_losses_equal_ln2())]),
    (ex.check_01_stable_probability, "subtract the max", right_stable_probability),
    (ex.check_01_stable_probability, "sigmoid", lambda a, b: torch.sigmoid(a - b)),
    (ex.check_01_negative_log_likelihood, "softplus", lambda s, w, l: F.softplus(-(s[w] - s[l])).sum()),
    (ex.check_01_negative_log_likelihood, "logsigmoid", lambda s, w, l: -F.logsigmoid(s[w] - s[l]).sum()),
    (ex.check_02_optimal_policy, "logsumexp keepdim", right_optimal_policy),
    (ex.check_02_optimal_policy, "softmax", lambda p, r, b: torch.softmax(p.log() + r / b, dim=-1)),
    (check_log10_sequences, "T log10 V", LENGTH * math.log10(VOCAB_SIZE)),
    (check_log10_sequences, "log10 of the exact integer", math.log10(VOCAB_SIZE**LENGTH)),
    (ex.check_03_dpo_loss, "logsigmoid", lambda *a: -F.logsigmoid(dpo_margin(*a))),
    (ex.check_03_dpo_loss, "softplus", lambda *a: F.softplus(-dpo_margin(*a))),
    (ex.check_03_gradient_weight, "sigmoid", lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pr - rr) - (pc - rc)))),
    (ex.check_04_sequence_logprobs, "log_softmax and gather", right_sequence_logprobs),
    (ex.check_04_sequence_logprobs, "cross_entropy", cross_entropy_sequence_logprobs),
    (ex.check_04_labels, "masked_fill", right_labels),
    (ex.check_05_total_variation, "half L1", lambda p, q: 0.5 * (p - q).abs().sum(-1)),
    (ex.check_05_ipo_ratio, "closed form", lambda w, l, b: w / l * math.exp(1 / (2 * b))),
    (ex.check_06_win_rate, "python floats", right_win_rate),
    (ex.check_06_win_rate, "float32 tensor", float32_win_rate),
    (ex.check_06_win_rate, "numpy float64", lambda p, r: np.mean((np.array(p) > np.array(r)) + 0.5 * (np.array(p) == np.array(r)))),
    (ex.check_06_kl_estimate, "mean log-ratio as float", lambda p, r: (p - r).mean().item()),
    (ex.check_06_kl_estimate, "mean log-ratio as tensor", lambda p, r: (p - r).mean()),
    (ex.check_07_odpo_loss, "offset inside", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b) - o)),
    (ex.check_07_offset, "floored gap", lambda w, l, a: a * torch.log((w - l).clamp_min(1e-3))),
]


@pytest.mark.parametrize("checker, label, answer", RIGHT, ids=[f"{case[0].__name__}-{case[1]}" for case in RIGHT])
def test_right_answer_accepted(checker, label, answer, capsys):
    assert checker(answer) is True
    assert "correct" in capsys.readouterr().out


# ------------------------------------------------------------------ mistakes

def subtract_min_probability(chosen, rejected):
    smallest = torch.minimum(chosen, rejected)
    exp_chosen, exp_rejected = torch.exp(chosen - smallest), torch.exp(rejected - smallest)
    return exp_chosen / (exp_chosen + exp_rejected)


def subtract_batch_max_probability(chosen, rejected):
    largest = torch.cat([chosen, rejected]).max()
    exp_chosen, exp_rejected = torch.exp(chosen - largest), torch.exp(rejected - largest)
    return exp_chosen / (exp_chosen + exp_rejected)


def optimal_policy_logsumexp_dim0(ref_probs, rewards, beta):
    logits = ref_probs.log() + rewards / beta
    return torch.exp(logits - torch.logsumexp(logits, 0))


def optimal_policy_no_keepdim(ref_probs, rewards, beta):
    logits = ref_probs.log() + rewards / beta
    return torch.exp(logits - torch.logsumexp(logits, -1))


def optimal_policy_naive(ref_probs, rewards, beta):
    unnormalised = ref_probs * torch.exp(rewards / beta)
    return unnormalised / unnormalised.sum(-1, keepdim=True)


def log_of_softmax_logprobs(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]
    token_logps = torch.log(torch.softmax(logits, -1)).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * (labels != -100)).sum(-1)


def shifted_the_wrong_way_logprobs(logits, labels):
    return right_sequence_logprobs(torch.cat([logits[:, 1:], logits[:, :1]], 1), torch.cat([labels[:, :1], labels[:, :-1]], 1))


def mean_token_logprobs(logits, labels):
    mask = labels[:, 1:] != -100
    return right_sequence_logprobs(logits, labels) / mask.sum(-1)


def unmasked_gather_logprobs(logits, labels):
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)


def labels_pad_is_zero(input_ids, prompt_lengths, attention_mask):
    in_prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]
    return input_ids.masked_fill(in_prompt | (input_ids == 0), -100)


def labels_prompt_off_by_one(input_ids, prompt_lengths, attention_mask):
    in_prompt = torch.arange(input_ids.shape[1])[None, :] <= prompt_lengths[:, None]
    return input_ids.masked_fill(in_prompt | (attention_mask == 0), -100)


def labels_prompt_only(input_ids, prompt_lengths, attention_mask):
    in_prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]
    return input_ids.masked_fill(in_prompt, -100)


def win_rate_as_text(policy, reference):
    return f"{right_win_rate(policy, reference):.1%}"


WRONG = [
    (ex.check_00_device_order, "forgotten return", returns_none),
    (ex.check_00_device_order, "mps before cuda", lambda cuda, mps: "mps" if mps else "cuda" if cuda else "cpu"),
    (ex.check_00_device_order, "forgot the cpu case", lambda cuda, mps: "cuda" if cuda else "mps" if mps else None),
    (ex.check_00_device_order, "dict lookup that raises", lambda cuda, mps: {True: "cuda"}[cuda]),
    (ex.check_00_initial_dpo_loss, "typed 0.6931", 0.6931),
    (ex.check_00_initial_dpo_loss, "typed 0.693147", 0.693147),
    (ex.check_00_initial_dpo_loss, "sigmoid(0) without the log", 1 / (1 + math.exp(0.0))),
    (ex.check_00_initial_dpo_loss, "forgot the minus", math.log(0.5)),
    (ex.check_00_initial_dpo_loss, "log10 instead of ln", -math.log10(0.5)),
    (ex.check_00_initial_dpo_loss, "a string", "ln 2"),
    (ex.check_00_initial_dpo_loss, "a function instead of its value", lambda: math.log(2)),
    (ex.check_00_sign_bugs, "none pass", set()),
    (ex.check_00_sign_bugs, "only the swap", {"a"}),
    (ex.check_00_sign_bugs, "only the reference swap", {"b"}),
    (ex.check_00_sign_bugs, "the flipped loss too", {"a", "b", "c"}),
    (ex.check_00_sign_bugs, "the missing reference too", {"a", "b", "d"}),
    (ex.check_00_sign_bugs, "an unknown label", {"a", "e"}),
    (ex.check_00_sign_bugs, "a number", 2),
    (ex.check_01_stable_probability, "forgotten return", returns_none),
    (ex.check_01_stable_probability, "subtracts the min", subtract_min_probability),
    (ex.check_01_stable_probability, "subtracts the batch max", subtract_batch_max_probability),
    (ex.check_01_stable_probability, "naive ratio", lambda a, b: a.exp() / (a.exp() + b.exp())),
    (ex.check_01_stable_probability, "P(rejected wins)", lambda a, b: right_stable_probability(b, a)),
    (ex.check_01_negative_log_likelihood, "forgotten return", returns_none),
    (ex.check_01_negative_log_likelihood, "-log(sigmoid)", lambda s, w, l: -torch.log(torch.sigmoid(s[w] - s[l])).sum()),
    (ex.check_01_negative_log_likelihood, "log(1 + exp(-x))", lambda s, w, l: torch.log(1 + torch.exp(-(s[w] - s[l]))).sum()),
    (ex.check_01_negative_log_likelihood, "mean instead of sum", lambda s, w, l: -F.logsigmoid(s[w] - s[l]).mean()),
    (ex.check_01_negative_log_likelihood, "winners and losers swapped", lambda s, w, l: -F.logsigmoid(s[l] - s[w]).sum()),
    (ex.check_01_negative_log_likelihood, "forgot the minus", lambda s, w, l: F.logsigmoid(s[w] - s[l]).sum()),
    (ex.check_02_optimal_policy, "forgotten return", returns_none),
    (ex.check_02_optimal_policy, "logsumexp over dim 0", optimal_policy_logsumexp_dim0),
    (ex.check_02_optimal_policy, "logsumexp without keepdim", optimal_policy_no_keepdim),
    (ex.check_02_optimal_policy, "naive product", optimal_policy_naive),
    (ex.check_02_optimal_policy, "no log of pi_ref", lambda p, r, b: torch.softmax(p + r / b, dim=-1)),
    (ex.check_02_optimal_policy, "r times beta", lambda p, r, b: torch.softmax(p.log() + r * b, dim=-1)),
    (check_log10_sequences, "the count itself", VOCAB_SIZE**LENGTH),
    (check_log10_sequences, "natural log", LENGTH * math.log(VOCAB_SIZE)),
    (check_log10_sequences, "forgot T", math.log10(VOCAB_SIZE)),
    (check_log10_sequences, "overflowed to inf", float("inf")),
    (ex.check_03_dpo_loss, "forgotten return", returns_none),
    (ex.check_03_dpo_loss, "-log(sigmoid)", lambda *a: -torch.log(torch.sigmoid(dpo_margin(*a)))),
    (ex.check_03_dpo_loss, "log(1 + exp(-x))", lambda *a: torch.log(1 + torch.exp(-dpo_margin(*a)))),
    (ex.check_03_dpo_loss, "chosen and rejected swapped", lambda pc, pr, rc, rr, b: -F.logsigmoid(dpo_margin(pr, pc, rr, rc, b))),
    (ex.check_03_dpo_loss, "reference minus policy", lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((rc - pc) - (rr - pr)))),
    (ex.check_03_dpo_loss, "missing minus on the loss", lambda *a: F.logsigmoid(dpo_margin(*a))),
    (ex.check_03_dpo_loss, "missing beta", lambda pc, pr, rc, rr, b: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, 1.0))),
    (ex.check_03_dpo_loss, "no reference", lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr))),
    (ex.check_03_dpo_loss, "averaged over pairs", lambda *a: -F.logsigmoid(dpo_margin(*a)).mean()),
    (ex.check_03_gradient_weight, "forgotten return", returns_none),
    (ex.check_03_gradient_weight, "sign flipped", lambda pc, pr, rc, rr, b: torch.sigmoid(dpo_margin(pc, pr, rc, rr, b))),
    (ex.check_03_gradient_weight, "missing beta", lambda pc, pr, rc, rr, b: torch.sigmoid(-dpo_margin(pc, pr, rc, rr, 1.0))),
    (ex.check_03_gradient_weight, "times beta", lambda pc, pr, rc, rr, b: b * torch.sigmoid(-dpo_margin(pc, pr, rc, rr, b))),
    (ex.check_04_sequence_logprobs, "forgotten return", returns_none),
    (ex.check_04_sequence_logprobs, "log of softmax", log_of_softmax_logprobs),
    (ex.check_04_sequence_logprobs, "no shift", lambda z, y: right_sequence_logprobs(torch.cat([z, z[:, :1]], 1), torch.cat([y[:, :1], y], 1))),
    (ex.check_04_sequence_logprobs, "shifted the wrong way", shifted_the_wrong_way_logprobs),
    (ex.check_04_sequence_logprobs, "mean over tokens", mean_token_logprobs),
    (ex.check_04_sequence_logprobs, "gathers -100 unmasked", unmasked_gather_logprobs),
    (ex.check_04_labels, "forgotten return", returns_none),
    (ex.check_04_labels, "padding found as id 0", labels_pad_is_zero),
    (ex.check_04_labels, "prompt off by one", labels_prompt_off_by_one),
    (ex.check_04_labels, "prompt only", labels_prompt_only),
    (ex.check_04_labels, "padding only", lambda ids, n, m: ids.masked_fill(m == 0, -100)),
    (ex.check_04_labels, "float labels", lambda ids, n, m: right_labels(ids, n, m).float()),
    (ex.check_05_total_variation, "forgotten return", returns_none),
    (ex.check_05_total_variation, "full L1", lambda p, q: (p - q).abs().sum(-1)),
    (ex.check_05_total_variation, "summed over the batch axis", lambda p, q: 0.5 * (p - q).abs().sum(0)),
    (ex.check_05_total_variation, "largest difference", lambda p, q: (p - q).abs().amax(-1)),
    (ex.check_05_ipo_ratio, "forgotten return", returns_none),
    (ex.check_05_ipo_ratio, "exp(1/beta)", lambda w, l, b: w / l * math.exp(1 / b)),
    (ex.check_05_ipo_ratio, "no reference ratio", lambda w, l, b: math.exp(1 / (2 * b))),
    (ex.check_05_ipo_ratio, "reference ratio upside down", lambda w, l, b: l / w * math.exp(1 / (2 * b))),
    (ex.check_06_win_rate, "forgotten return", returns_none),
    (ex.check_06_win_rate, "ties count 0", lambda p, r: sum(a > b for a, b in zip(p, r)) / len(p)),
    (ex.check_06_win_rate, "ties count 1", lambda p, r: sum(a >= b for a, b in zip(p, r)) / len(p)),
    (ex.check_06_win_rate, "a count, not a fraction", lambda p, r: sum((a > b) + 0.5 * (a == b) for a, b in zip(p, r))),
    (ex.check_06_win_rate, "a percentage", lambda p, r: 100 * right_win_rate(p, r)),
    (ex.check_06_win_rate, "formatted text", win_rate_as_text),
    (ex.check_06_kl_estimate, "forgotten return", returns_none),
    (ex.check_06_kl_estimate, "sign flipped", lambda p, r: (r - p).mean()),
    (ex.check_06_kl_estimate, "abs of each log-ratio", lambda p, r: (p - r).abs().mean()),
    (ex.check_06_kl_estimate, "negative log-ratios clipped", lambda p, r: (p - r).clamp_min(0).mean()),
    (ex.check_06_kl_estimate, "sum instead of mean", lambda p, r: (p - r).sum()),
    (ex.check_06_kl_estimate, "mean probability ratio", lambda p, r: (p - r).exp().mean()),
    (ex.check_07_odpo_loss, "forgotten return", returns_none),
    (ex.check_07_odpo_loss, "-log(sigmoid)", lambda pc, pr, rc, rr, b, o: -torch.log(torch.sigmoid(dpo_margin(pc, pr, rc, rr, b) - o))),
    (ex.check_07_odpo_loss, "log(1 + exp(-x))", lambda pc, pr, rc, rr, b, o: torch.log(1 + torch.exp(o - dpo_margin(pc, pr, rc, rr, b)))),
    (ex.check_07_odpo_loss, "offset outside", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b)) - o),
    (ex.check_07_odpo_loss, "offset added", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b) + o)),
    (ex.check_07_odpo_loss, "offset ignored", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(dpo_margin(pc, pr, rc, rr, b))),
    (ex.check_07_odpo_loss, "offset scaled by beta", lambda pc, pr, rc, rr, b, o: -F.logsigmoid(b * ((pc - rc) - (pr - rr) - o))),
    (ex.check_07_offset, "forgotten return", returns_none),
    (ex.check_07_offset, "no floor", lambda w, l, a: a * torch.log(w - l)),
    (ex.check_07_offset, "floor after the log", lambda w, l, a: (a * torch.log(w - l)).clamp_min(math.log(1e-3))),
    (ex.check_07_offset, "1e-3 added to the gap", lambda w, l, a: a * torch.log(w - l + 1e-3)),
    (ex.check_07_offset, "alpha inside the log", lambda w, l, a: torch.log(a * (w - l).clamp_min(1e-3))),
]

# Pieces of the answer that a hint must not print.
FORMULA_FRAGMENTS = {
    ex.check_02_log10_sequences: ("T log10", "log10 |V|", "log10(|V|)"),
    ex.check_06_kl_estimate: ("log pi(y|x) - log pi_ref", "log pi - log pi_ref", "mean over samples of"),
    ex.check_07_odpo_loss: ("sigmoid(beta", "beta * h - offset", "beta h - offset"),
    ex.check_03_dpo_loss: ("sigmoid(beta", "(pc - rc)", "log pi_w"),
}


def _checker_of(case_checker):
    return ex.check_02_log10_sequences if case_checker is check_log10_sequences else case_checker


@pytest.mark.parametrize("checker, label, answer", WRONG, ids=[f"{case[0].__name__}-{case[1]}" for case in WRONG])
def test_mistake_rejected_in_one_line(checker, label, answer, capsys):
    assert checker(answer) is False
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    assert "correct" not in lines[0] and "Traceback" not in lines[0]
    for fragment in FORMULA_FRAGMENTS.get(_checker_of(checker), ()):
        assert fragment not in lines[0], f"the hint gives the formula away: {lines[0]}"


FORGOTTEN_RETURNS = [(checker, answer) for checker, label, answer in WRONG if label == "forgotten return"]


@pytest.mark.parametrize("checker, answer", FORGOTTEN_RETURNS, ids=[case[0].__name__ for case in FORGOTTEN_RETURNS])
def test_forgotten_return_named(checker, answer, capsys):
    assert checker(answer) is False
    assert "your function returned None - did you forget `return`?" in capsys.readouterr().out


@pytest.mark.parametrize("label, hint", [
    ("-log(sigmoid)", "stabl"), ("chosen and rejected swapped", "swapped"), ("reference minus policy", "reference"),
    ("missing minus on the loss", "minus"), ("missing beta", "beta"), ("no reference", "reference"),
    ("averaged over pairs", "per pair")])
def test_dpo_loss_names_the_slip(label, hint, capsys):
    (answer,) = [answer for checker, case_label, answer in WRONG if checker is ex.check_03_dpo_loss and case_label == label]
    assert ex.check_03_dpo_loss(answer) is False
    assert hint in capsys.readouterr().out


def test_sign_bug_hint_does_not_depend_on_which_bug(capsys):
    """The message says what kind of error the set holds, never which letter is wrong."""
    ex.check_00_sign_bugs({"a"})
    ex.check_00_sign_bugs({"b"})
    missing_a, missing_b = capsys.readouterr().out.strip().splitlines()
    ex.check_00_sign_bugs({"a", "b", "c"})
    ex.check_00_sign_bugs({"a", "b", "d"})
    extra_c, extra_d = capsys.readouterr().out.strip().splitlines()
    assert missing_a == missing_b and extra_c == extra_d and missing_a != extra_c


def test_sign_bug_answer_is_two_margin_flips():
    """Independently of the checker: the two margin flips give ln 2 at step 1, the other two bugs do not."""
    assert step_one_losses_equal_ln2() == {"a", "b"}


@pytest.mark.parametrize("checker", [ex.check_00_initial_dpo_loss, ex.check_00_sign_bugs, check_log10_sequences])
def test_value_checkers_not_attempted(checker, capsys):
    assert checker(None) is None
    assert "not attempted" in capsys.readouterr().out
