"""check_03_step_prediction: the truth comes from real DPO steps, and a wrong answer's hint does not give it away."""
import torch

from dpo_edu import exercises as ex
from dpo_edu.exercises import nb03

RIGHT = {"log_pi_chosen": "either", "log_pi_rejected": "either", "h": "rises"}


def first_order_chosen_rises(features, theta, chosen, rejected):
    probs = torch.softmax(features @ theta, -1)
    grad_log_chosen = features[chosen] - probs @ features  # grad log pi(y_w) of a log-linear policy
    grad_h = features[chosen] - features[rejected]  # the log-partition cancels in h
    return bool(grad_log_chosen @ grad_h > 0)


def stub(*args):
    raise NotImplementedError


def test_right_answer_passes(capsys):
    assert ex.check_03_step_prediction(RIGHT, first_order_chosen_rises) is True
    assert "correct" in capsys.readouterr().out


def test_stub_is_not_attempted(capsys):
    assert ex.check_03_step_prediction({"log_pi_chosen": None, "log_pi_rejected": None, "h": None}, stub) is None
    assert ex.check_03_step_prediction(None, stub) is None
    assert ex.check_03_step_prediction(RIGHT, stub) is None
    assert capsys.readouterr().out.count("not attempted") == 3


def test_the_tabular_intuition_is_wrong_and_the_hint_keeps_the_answer(capsys):
    """'the chosen always rises' fails, and the printed hint names neither the right answer nor the criterion."""
    tabular = {"log_pi_chosen": "rises", "log_pi_rejected": "falls", "h": "rises"}
    assert ex.check_03_step_prediction(tabular, first_order_chosen_rises) is False
    out = capsys.readouterr().out
    assert "wrong" in out and "log_pi_chosen" in out
    for giveaway in ("either", "can fall", "< 0", "falls whenever"):
        assert giveaway not in out


def test_each_quantity_is_checked(capsys):
    for key, wrong in (("log_pi_rejected", "falls"), ("h", "either"), ("h", "falls")):
        assert ex.check_03_step_prediction({**RIGHT, key: wrong}, first_order_chosen_rises) is False
        out = capsys.readouterr().out
        assert key in out and "either" not in out and "rises" not in out
    assert ex.check_03_step_prediction({**RIGHT, "h": "goes up"}, first_order_chosen_rises) is False


def test_a_wrong_diagnosis_fails(capsys):
    assert ex.check_03_step_prediction(RIGHT, lambda features, theta, chosen, rejected: True) is False
    always_out = capsys.readouterr().out
    assert "wrong on" in always_out and "< 0" not in always_out
    # the tabular rule 1 - pi_w + pi_l > 0, applied to a log-linear policy, is a wrong diagnosis too
    assert ex.check_03_step_prediction(RIGHT, lambda f, t, c, r: bool(1 - torch.softmax(f @ t, -1)[c] > 0)) is False


def test_the_truth_is_computed_not_stored(monkeypatch, capsys):
    """On tabular policies (features = identity) the same checker wants the tabular answer."""
    generator = torch.Generator().manual_seed(0)

    def tabular_instances(n=50, seed=0):
        for _ in range(n):
            yield (torch.eye(4, dtype=torch.float64), torch.randn(4, generator=generator, dtype=torch.float64),
                   torch.log_softmax(torch.randn(4, generator=generator, dtype=torch.float64), -1), 0, 1)

    monkeypatch.setattr(nb03, "_03_random_step_instances", tabular_instances)
    tabular = {"log_pi_chosen": "rises", "log_pi_rejected": "falls", "h": "rises"}
    assert ex.check_03_step_prediction(tabular, first_order_chosen_rises) is True
    assert ex.check_03_step_prediction(RIGHT, first_order_chosen_rises) is False
