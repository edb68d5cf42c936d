"""Notebook 09's checkers: the right answer passes, None is "not attempted", typical wrong answers get a hint."""
import pytest

from dpo_edu.exercises import STALLED_LOGS_09, check_09_learning_rate, check_09_seen_unseen, check_09_stall
from dpo_edu.train import TrainConfig
from conftest import REVIEW_PAIRS

RIGHT = {"A": "one step", "B": "masked", "C": "live reference", "D": "warm-up"}


def test_stall_right_answer_passes_and_none_is_not_attempted(capsys):
    assert check_09_stall(RIGHT) is True
    assert check_09_stall(None) is None and check_09_stall(dict.fromkeys(RIGHT)) is None
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("answer, hint", [
    ({**RIGHT, "A": "warm-up", "D": "one step"}, "lr climbing from 0"),
    ({**RIGHT, "B": "live reference", "C": "masked"}, "margins exactly 0 while the log-probs move"),
    ({**RIGHT, "C": "frozen"}, "answer one of"),
    ({"A": "one step"}, "expected a dict with the keys"),
    (dict.fromkeys(RIGHT, "masked"), "3 of 4 wrong"),
])
def test_stall_wrong_answers_get_a_hint(answer, hint, capsys):
    assert check_09_stall(answer) is False
    out = capsys.readouterr().out
    assert hint in out


def test_the_stalled_logs_show_the_telltales_their_labels_claim():
    from dpo_edu.diagnosis import _stall_cause

    causes = {label: _stall_cause(log, log) for label, log in STALLED_LOGS_09.items()}
    assert "every label is masked" in causes["B"] and "reference moves with the policy" in causes["C"]
    assert "warm-up" in causes["D"] and "one-step run" in causes["A"]


SWEEP = {1e-6: ([], {"reward_gain": 0.001, "kl": 0.004}), 1e-4: ([], {"reward_gain": 0.3, "kl": 2.0}),
         1e-3: ([], {"reward_gain": 0.1, "kl": 12.0})}


def test_learning_rate_right_answer_passes_and_none_is_not_attempted(capsys):
    assert check_09_learning_rate.truth(SWEEP) == {"best lr": 1e-4, "kl at 1e-6 below 0.1": True}
    assert check_09_learning_rate({"best lr": 1e-4, "kl at 1e-6 below 0.1": True}, SWEEP) is True
    assert check_09_learning_rate(None, SWEEP) is None


@pytest.mark.parametrize("answer, hint", [
    ({"best lr": 1e-3, "kl at 1e-6 below 0.1": True}, "best lr is not 0.001"),
    ({"best lr": 1e-6, "kl at 1e-6 below 0.1": True}, "best lr is not 1e-06"),
    ({"best lr": 1e-4, "kl at 1e-6 below 0.1": False}, "the KL at the smallest rate"),
    ({"best lr": 5e-5, "kl at 1e-6 below 0.1": True}, "answer one of the swept rates"),
    ({"best lr": 1e-4, "kl at 1e-6 below 0.1": "yes"}, "answer True or False"),
])
def test_learning_rate_wrong_answers_get_a_hint(answer, hint, capsys):
    assert check_09_learning_rate(answer, SWEEP) is False
    assert hint in capsys.readouterr().out


@pytest.fixture(scope="module")
def fitted(tokenizer, tinier_model):
    """A tiny policy trained on the first 6 review pairs; the last 2 are held out."""
    from dpo_edu.train import train_dpo

    config = TrainConfig(beta=0.5, learning_rate=1e-2, batch_size=2, epochs=3, warmup_steps=0, max_length=16,
                         max_prompt_length=8, mixed_precision="fp32", use_chat_template=False, seed=0)
    reference, policy = tinier_model(), tinier_model()
    train_dpo(policy, tokenizer, REVIEW_PAIRS[:6], config, progress=False, log=None)
    return policy, tokenizer, REVIEW_PAIRS[:6], REVIEW_PAIRS[6:], reference, config


def test_seen_unseen_truth_passes_and_each_flip_fails(fitted, capsys):
    truth = check_09_seen_unseen.truth(*fitted)
    assert truth["larger margin"] == "train"  # fitted to its training pairs
    assert check_09_seen_unseen(truth, *fitted) is True
    flip = {"above": "below", "below": "above", "train": "held-out", "held-out": "train"}
    for key in truth:
        assert check_09_seen_unseen({**truth, key: flip[truth[key]]}, *fitted) is False
        assert f"{key} not as measured" in capsys.readouterr().out


def test_seen_unseen_bad_answers_get_a_hint(fitted, capsys):
    assert check_09_seen_unseen(None, *fitted) is None
    assert check_09_seen_unseen({"train chosen": "up", "held-out rejected": "above", "larger margin": "train"},
                                *fitted) is False
    assert "answer one of ('above', 'below')" in capsys.readouterr().out
    assert check_09_seen_unseen({"train chosen": "above"}, *fitted) is False
    assert "expected a dict with the keys" in capsys.readouterr().out
