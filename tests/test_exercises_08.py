"""Notebook 08's checkers accept the right answers and reject the typical wrong ones, each with its own hint."""
import torch
import torch.nn.functional as F

from dpo_edu import exercises, losses


def _verdict(capsys, checker, answer):
    result = checker(answer)
    return result, capsys.readouterr().out


def _z(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


def test_robust_loss_accepts_the_right_answer(capsys):
    def right(pc, pr, rc, rr, beta, eps):
        z = _z(pc, pr, rc, rr, beta)
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)

    result, out = _verdict(capsys, exercises.check_08_robust_loss, right)
    assert result is True and "correct" in out
    assert exercises.check_08_robust_loss(lambda *args: losses.dpo_loss(*args[:5], loss_type="robust", label_smoothing=args[5])[0])


def test_robust_loss_rejects_slips(capsys):
    slips = {
        "cDPO": lambda pc, pr, rc, rr, b, e: -(1 - e) * F.logsigmoid(_z(pc, pr, rc, rr, b)) - e * F.logsigmoid(-_z(pc, pr, rc, rr, b)),
        "1 - 2 eps is missing": lambda pc, pr, rc, rr, b, e: -(1 - e) * F.logsigmoid(_z(pc, pr, rc, rr, b)) + e * F.logsigmoid(-_z(pc, pr, rc, rr, b)),
        "plain DPO": lambda pc, pr, rc, rr, b, e: -F.logsigmoid(_z(pc, pr, rc, rr, b)),
        "multiplies instead": lambda pc, pr, rc, rr, b, e: (1 - 2 * e) * (-(1 - e) * F.logsigmoid(_z(pc, pr, rc, rr, b)) + e * F.logsigmoid(-_z(pc, pr, rc, rr, b))),
        "swapped": lambda pc, pr, rc, rr, b, e: (-e * F.logsigmoid(_z(pc, pr, rc, rr, b)) + (1 - e) * F.logsigmoid(-_z(pc, pr, rc, rr, b))) / (1 - 2 * e),
    }
    hints = {"cDPO": "cDPO", "1 - 2 eps is missing": "division by 1 - 2 eps is missing", "plain DPO": "plain DPO",
             "multiplies instead": "multiplies instead", "swapped": "swapped"}
    for name, slip in slips.items():
        result, out = _verdict(capsys, exercises.check_08_robust_loss, slip)
        assert result is False and hints[name] in out, (name, out)
    # a batch mean instead of per-pair losses, and an unstable log(sigmoid())
    result, out = _verdict(capsys, exercises.check_08_robust_loss, lambda *a: slips["plain DPO"](*a).mean())
    assert result is False and "one value per row" in out

    def unstable(pc, pr, rc, rr, b, e):
        z = _z(pc, pr, rc, rr, b)
        return (-(1 - e) * torch.log(torch.sigmoid(z)) + e * torch.log(torch.sigmoid(-z))) / (1 - 2 * e)

    result, out = _verdict(capsys, exercises.check_08_robust_loss, unstable)
    assert result is False and "inf or nan" in out


def test_robust_loss_not_attempted(capsys):
    def stub(*args):
        raise NotImplementedError

    result, out = _verdict(capsys, exercises.check_08_robust_loss, stub)
    assert result is None and "not attempted" in out


def test_simpo_loss(capsys):
    def right(pc, pr, nc, nl, beta, gamma):
        return -F.logsigmoid(beta * (pc / nc - pr / nl) - gamma)

    result, out = _verdict(capsys, exercises.check_08_simpo_loss, right)
    assert result is True and "correct" in out
    slips = {
        "not divided by their lengths": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc - pr) - g),
        "multiplied by beta": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc / nc - pr / nl - g)),
        "outside the log-sigmoid": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc / nc - pr / nl)) - g,
        "sign looks flipped": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc / nc - pr / nl) + g),
        "gamma looks unused": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc / nc - pr / nl)),
        "lengths look swapped": lambda pc, pr, nc, nl, b, g: -F.logsigmoid(b * (pc / nl - pr / nc) - g),
    }
    for hint, slip in slips.items():
        result, out = _verdict(capsys, exercises.check_08_simpo_loss, slip)
        assert result is False and hint in out, (hint, out)


def test_noisy_target(capsys):
    def right(p, eps, loss):
        noisy = (1 - eps) * p + eps * (1 - p)
        return {"sigmoid": noisy, "cdpo": (1 - eps) * noisy + eps * (1 - noisy), "robust": p}[loss]

    result, out = _verdict(capsys, exercises.check_08_noisy_target, right)
    assert result is True and "correct" in out
    slips = {
        "clean probability": lambda p, eps, loss: p,  # every loss recovers p: wrong for sigmoid
        "noisy labels' probability": lambda p, eps, loss: right(p, eps, "sigmoid"),  # wrong for cdpo
        "cDPO's target": lambda p, eps, loss: right(p, eps, "cdpo") if loss != "sigmoid" else right(p, eps, loss),  # wrong for robust
        "hint": lambda p, eps, loss: 0.5,
    }
    for hint, slip in slips.items():
        result, out = _verdict(capsys, exercises.check_08_noisy_target, slip)
        assert result is False and hint in out, (hint, out)
    result, out = _verdict(capsys, exercises.check_08_noisy_target, lambda p, eps, loss: "0.8")
    assert result is False and "real number" in out
