"""Notebook 08's checkers accept the right answers and reject the typical wrong ones, each with its own hint."""
import torch

from dpo_edu import exercises, losses


def _verdict(capsys, checker, answer):
    result = checker(answer)
    return result, capsys.readouterr().out


# ---- the exercises of issue 25: predict (bounded or not), derive (rDPO's floor), diagnose (mislabelled losses)

BOUNDED_TRUTH = {"DPO": "runs away", "IPO": "bounded", "cDPO": "bounded", "rDPO": "runs away", "hinge": "bounded"}


def test_bounded_accepts_the_truth_and_waits_for_an_answer(capsys):
    result, out = _verdict(capsys, exercises.check_08_bounded, dict(BOUNDED_TRUTH))
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_08_bounded, {name: None for name in BOUNDED_TRUTH})
    assert result is None and "not attempted" in out


def test_bounded_rejects_typical_predictions_without_naming_the_loss(capsys):
    robust_is_safe = {**BOUNDED_TRUTH, "rDPO": "bounded"}  # "robust" read as "bounded"
    smoothing_runs = {**BOUNDED_TRUTH, "cDPO": "runs away"}  # cDPO lumped with rDPO
    hinge_runs = {**BOUNDED_TRUTH, "hinge": "runs away"}
    all_bounded = dict.fromkeys(BOUNDED_TRUTH, "bounded")
    dpo_bounded = {**BOUNDED_TRUTH, "DPO": "bounded"}
    for answer, hint in ((robust_is_safe, "1 of the losses you call bounded"), (smoothing_runs, "stop at a finite margin"),
                         (hinge_runs, "stop at a finite margin"), (all_bounded, "2 of the losses you call bounded"),
                         (dpo_bounded, "1 of the losses you call bounded")):
        result, out = _verdict(capsys, exercises.check_08_bounded, answer)
        assert result is False and hint in out, (answer, out)
        assert not any(f"{name}:" in out or f"{name} " in out for name in ("DPO", "IPO", "cDPO", "rDPO")), out
        assert "hinge:" not in out and "hinge is" not in out, out  # no verdict per loss
    for answer, hint in (({**BOUNDED_TRUTH, "IPO": "settles"}, "is not one of"), (["DPO"], "expected a dict"),
                         ({"DPO": "bounded"}, "exactly the keys"), ({**BOUNDED_TRUTH, "IPO": None}, "still None")):
        result, out = _verdict(capsys, exercises.check_08_bounded, answer)
        assert result is False and hint in out, (answer, out)


def test_bounded_truth_is_computed_from_the_losses():
    from dpo_edu.exercises.nb08 import _08_runs_away

    assert {name: "runs away" if _08_runs_away(settings) else "bounded"
            for name, settings in exercises.BOUNDED_LOSSES_08.items()} == BOUNDED_TRUTH
    assert not _08_runs_away({"loss_type": "ipo"}, beta=0.1) and _08_runs_away({"loss_type": "sigmoid"}, beta=0.1)


def test_rdpo_floor(capsys):
    result, out = _verdict(capsys, exercises.check_08_rdpo_floor, lambda eps: eps / (1 - 2 * eps))
    assert result is True and "correct" in out

    def stub(eps):
        raise NotImplementedError

    result, out = _verdict(capsys, exercises.check_08_rdpo_floor, stub)
    assert result is None and "not attempted" in out
    slips = {
        "division by 1 - 2 eps is missing": lambda eps: eps,
        "divided by 1 - eps": lambda eps: eps / (1 - eps),
        "multiplies instead of dividing": lambda eps: eps * (1 - 2 * eps),
        "far on the wrong side": lambda eps: (1 - eps) / (1 - 2 * eps),
        "weight at z = 0": lambda eps: 0.5 / (1 - 2 * eps),
        "DPO's floor": lambda eps: 0.0,
        "a positive number": lambda eps: -eps / (1 - 2 * eps),
        "write dL/dz": lambda eps: 2 * eps,
    }
    for hint, slip in slips.items():
        result, out = _verdict(capsys, exercises.check_08_rdpo_floor, slip)
        assert result is False and hint in out, (hint, out)


def test_rdpo_floor_is_the_slope_of_the_package_loss():
    """The floor the checker wants is the package's: |dL/dz| of loss_type="robust" far on the right side."""
    for eps in (0.1, 0.3):
        z = torch.tensor([40.0], dtype=torch.float64, requires_grad=True)
        zero = torch.zeros_like(z)
        loss = losses.dpo_loss(z, zero, zero, zero, 1.0, loss_type="robust", label_smoothing=eps)[0]
        (slope,) = torch.autograd.grad(loss.sum(), z)
        assert abs(-slope.item() - eps / (1 - 2 * eps)) < 1e-12


DIAGNOSIS = {"A": "rDPO", "B": "hinge", "C": "DPO", "D": "IPO", "E": "cDPO"}


def test_diagnosis_accepts_the_truth_and_waits_for_an_answer(capsys):
    result, out = _verdict(capsys, exercises.check_08_diagnosis, dict(DIAGNOSIS))
    assert result is True and "correct" in out
    result, out = _verdict(capsys, exercises.check_08_diagnosis, dict.fromkeys(DIAGNOSIS))
    assert result is None and "not attempted" in out


def test_diagnosis_suspects_compute_what_the_truth_says():
    h = torch.tensor([-20.0, 0.0, 1.0, 20.0], dtype=torch.float64)
    for label, name in DIAGNOSIS.items():
        settings = {"DPO": {}, "cDPO": {"label_smoothing": 0.2}, "IPO": {"loss_type": "ipo"},
                    "rDPO": {"loss_type": "robust", "label_smoothing": 0.2}, "hinge": {"loss_type": "hinge"}}[name]
        zero = torch.zeros_like(h)
        assert torch.allclose(exercises.SUSPECTS_08[label](h), losses.dpo_loss(h, zero, zero, zero, 0.5, **settings)[0])


def test_diagnosis_rejects_typical_mix_ups(capsys):
    mix_ups = {
        "start at ln 2": {**DIAGNOSIS, "A": "cDPO", "E": "rDPO"},  # the two smoothed losses swapped
        "start at 1 are swapped": {**DIAGNOSIS, "B": "IPO", "D": "hinge"},  # equal at h = 0 when beta = 0.5
        "starts elsewhere": {**DIAGNOSIS, "C": "IPO", "D": "DPO"},
        "appears twice": {**DIAGNOSIS, "A": "DPO"},
        "is not one of": {**DIAGNOSIS, "A": "robust"},
    }
    for hint, answer in mix_ups.items():
        result, out = _verdict(capsys, exercises.check_08_diagnosis, answer)
        assert result is False and hint in out, (hint, out)
        for label, name in DIAGNOSIS.items():
            assert f"{label}: {name}" not in out and f"{label} is {name}" not in out, out
