"""Notebook 10's checkers: the right answer passes, None is "not attempted", typical wrong answers get a hint."""
import math

import pytest

from dpo_edu.exercises import REWARD_MODEL_LOGS_10, check_10_bon_kl, check_10_frontier, check_10_reward_model

RIGHT_LOGS = {"A": "not learning", "B": "memorising", "C": "labels swapped"}


def test_reward_model_logs_right_answer_passes_and_none_is_not_attempted(capsys):
    assert check_10_reward_model(RIGHT_LOGS) is True
    assert check_10_reward_model(None) is None and check_10_reward_model(dict.fromkeys(RIGHT_LOGS)) is None
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("answer, hint", [
    ({**RIGHT_LOGS, "B": "not learning", "A": "memorising"}, "held-out pairs stay at chance"),
    ({**RIGHT_LOGS, "C": "memorising"}, "held-out pairs stay at chance"),
    ({**RIGHT_LOGS, "C": "overfit"}, "answer one of"),
    ({"A": "not learning"}, "expected a dict with the keys"),
    (dict.fromkeys(RIGHT_LOGS, "labels swapped"), "2 of 3 wrong"),
])
def test_reward_model_logs_wrong_answers_get_a_hint(answer, hint, capsys):
    assert check_10_reward_model(answer) is False
    assert hint in capsys.readouterr().out


def test_the_made_up_logs_show_what_their_labels_claim():
    a, b, c = (REWARD_MODEL_LOGS_10[name] for name in "ABC")
    assert all(abs(e["loss"] - math.log(2)) < 1e-3 and e["accuracy"] == 0.5 for e in a)
    assert b[-1]["accuracy"] == 1.0 and b[-1]["heldout_accuracy"] < 0.5 and b[-1]["loss"] < b[0]["loss"]
    assert c[-1]["accuracy"] < 0.5 and c[-1]["loss"] > math.log(2) and c[-1]["loss"] > c[0]["loss"]


def test_bon_kl_right_answer_passes(capsys):
    assert check_10_bon_kl({"N=4": math.log(4) - 0.75, "with ties": "below"}) is True
    assert check_10_bon_kl({"N=4": None, "with ties": None}) is None


@pytest.mark.parametrize("answer, hint", [
    ({"N=4": math.log(4), "with ties": "below"}, "not its mean"),
    ({"N=4": math.log(4) - 4 / 3, "with ties": "below"}, "integral"),
    ({"N=4": math.log(4) - 0.75, "with ties": "above"}, "upper bound"),
    ({"N=4": "0.64", "with ties": "below"}, "a number"),
    ({"N=4": math.log(4) - 0.75, "with ties": "lower"}, "answer 'above' or 'below'"),
])
def test_bon_kl_wrong_answers_get_a_hint(answer, hint, capsys):
    assert check_10_bon_kl(answer) is False
    assert hint in capsys.readouterr().out


def summary(dpo_minus_rloo_gold, rloo_gain, rloo_gold_gain):
    point = {"kl": 0.5, "difference": dpo_minus_rloo_gold, "se": 0.01, "per_seed": {0: dpo_minus_rloo_gold},
             "separated": True}
    return {"matched_kl": [{"a": ["all pairs", "dpo", 0.1], "b": ["all pairs", "sft", None], "at": [{**point, "difference": 9}]},
                           {"a": ["all pairs", "dpo", 0.1], "b": ["all pairs", "rloo-gold", 0.05], "at": [point]}],
            "final": [{"setting": "all pairs", "method": "rloo", "gain": rloo_gain},
                      {"setting": "all pairs", "method": "rloo-gold", "gain": rloo_gold_gain}]}


def test_frontier_prediction_is_read_from_the_sweep(capsys):
    sweep = summary(-0.1, 0.05, 0.3)
    assert check_10_frontier.truth(sweep) == {"higher at matched KL": "rloo-gold", "reward-model RLOO gains": "less"}
    assert check_10_frontier({"higher at matched KL": "rloo-gold", "reward-model RLOO gains": "less"}, sweep) is True
    assert check_10_frontier({"higher at matched KL": "dpo", "reward-model RLOO gains": "less"}, sweep) is False
    assert "matched-KL table" in capsys.readouterr().out
    other = summary(+0.1, 0.4, 0.3)
    assert check_10_frontier({"higher at matched KL": "dpo", "reward-model RLOO gains": "more"}, other) is True
    assert check_10_frontier({"higher at matched KL": "dpo", "reward-model RLOO gains": "less"}, other) is False
    assert check_10_frontier({"higher at matched KL": None, "reward-model RLOO gains": None}, other) is None
    assert check_10_frontier({"higher at matched KL": "ppo", "reward-model RLOO gains": "more"}, other) is False
