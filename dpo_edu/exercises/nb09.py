"""Checkers for notebook 09 (the DPO clinic) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math

from ._checking import _labelled_causes, _NotAttempted, _verdict, _Wrong

# ------------------------------------------------------------------ 09 §1: four logs stuck at ln 2 (diagnose)

LN2 = math.log(2)


def _line(step, loss, margin, logp_c, grad, lr, logp_r=None):
    return {
        "step": step,
        "loss": loss,
        "rewards/margins": margin,
        "logps/chosen": logp_c,
        "logps/rejected": logp_c - 8.0 if logp_r is None else logp_r,
        "grad_norm": grad,
        "lr": lr,
    }


# Made up for the exercise (not logged by a run), with numbers of the kind section 1's runs print. Labels are
# not in the order of section 1, and each log is one cause.
STALLED_LOGS_09 = {
    "A": [_line(1, LN2, 0.0, -96.41, 11.83, 0.0)],
    "B": [_line(step, LN2, 0.0, 0.0, 0.0, 1e-4, 0.0) for step in (1, 2, 3, 4)],
    "C": [
        _line(1, LN2, 0.0, -101.92, 10.71, 1e-4),
        _line(2, LN2, 0.0, -99.30, 11.02, 1e-4),
        _line(3, LN2, 0.0, -93.77, 12.65, 1e-4),
        _line(4, LN2, 0.0, -84.05, 14.90, 1e-4),
    ],
    "D": [
        _line(1, LN2, 0.0, -104.2, 10.52, 0.0),
        _line(2, LN2, 0.0, -98.8, 10.87, 1.0e-6),
        _line(3, 0.6928, 0.0061, -101.5, 11.10, 2.0e-6),
        _line(4, 0.6924, 0.0140, -99.1, 10.95, 3.0e-6),
    ],
}
_STALL_TRUTH = {"A": "one step", "B": "masked", "C": "live reference", "D": "warm-up"}
_STALL_HINTS = {
    "one step": "a one-step run logs one line, step 1 (always ln 2: measured before its update)",
    "masked": "every label masked leaves log-probs of exactly 0 and no gradient at all",
    "live reference": "a live reference keeps margins exactly 0 while the log-probs move and the gradient is not 0",
    "warm-up": "a warm-up shows an lr climbing from 0, step after step",
}


def check_09_stall(causes: dict | None) -> bool | None:
    """causes: {"A".."D": one of "warm-up", "masked", "live reference", "one step"} for STALLED_LOGS_09."""

    def body() -> str:
        _labelled_causes(causes, _STALL_TRUTH, _STALL_HINTS, advice="; read its lr, grad_norm and logps/chosen again")
        return "lr, grad_norm and the log-probs tell the four causes apart"

    return _verdict("ln 2 causes", body)


# ------------------------------------------------------------------ 09 §3: seen and unseen pairs (predict)


def _seen_unseen_truth(policy, tokenizer, train_pairs, heldout_pairs, reference_model, config) -> dict:
    from ..clinic import dpo_metrics, policy_logps
    from ..train import compute_pair_logps

    metrics = {}
    for name, pairs in (("train", train_pairs), ("held-out", heldout_pairs)):
        reference = compute_pair_logps(reference_model, tokenizer, pairs, config)
        metrics[name] = dpo_metrics(policy_logps(policy, tokenizer, pairs, config), reference, config.beta)
    margin = {name: m["chosen"] - m["rejected"] for name, m in metrics.items()}
    return {
        "train chosen": "above" if metrics["train"]["chosen"] > 0 else "below",
        "held-out rejected": "above" if metrics["held-out"]["rejected"] > 0 else "below",
        "larger margin": max(margin, key=margin.get),
        "_numbers": metrics,
    }


def check_09_seen_unseen(
    prediction: dict | None, policy, tokenizer, train_pairs, heldout_pairs, reference_model, config
) -> bool | None:
    """prediction: {"train chosen": "above"|"below" 0, "held-out rejected": "above"|"below" 0, "larger margin":
    "train"|"held-out"}; the truth is measured on the policy and both sets of pairs, and shown once answered."""
    keys = ("train chosen", "held-out rejected", "larger margin")

    def body() -> str:
        if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
            raise _NotAttempted
        if not isinstance(prediction, dict) or sorted(prediction) != sorted(keys):
            raise _Wrong(f"expected a dict with the keys {list(keys)}")
        allowed = {
            "train chosen": ("above", "below"),
            "held-out rejected": ("above", "below"),
            "larger margin": ("train", "held-out"),
        }
        for key in keys:
            if prediction[key] not in allowed[key]:
                raise _Wrong(f"{key}: answer one of {allowed[key]}")
        truth = _seen_unseen_truth(policy, tokenizer, train_pairs, heldout_pairs, reference_model, config)
        numbers = truth.pop("_numbers")
        shown = "; ".join(
            f"{name}: chosen {m['chosen']:+.3f}, rejected {m['rejected']:+.3f}" for name, m in numbers.items()
        )
        wrong = [key for key in keys if prediction[key] != truth[key]]
        if wrong:
            raise _Wrong(
                f"{', '.join(wrong)} not as measured ({shown}): the margin is what DPO fits; which "
                f"pairs has the policy been fitted to?"
            )
        return f"as measured: {shown}"

    return _verdict("seen and unseen pairs", body)


check_09_seen_unseen.truth = lambda *args: {
    key: value for key, value in _seen_unseen_truth(*args).items() if not key.startswith("_")
}


# ------------------------------------------------------------------ 09 §4: the learning-rate sweep (predict)


def _learning_rate_truth(sweep: dict) -> dict:
    gains = {lr: result["reward_gain"] for lr, (_, result) in sweep.items()}
    smallest = min(sweep)
    return {"best lr": max(gains, key=gains.get), "kl at 1e-6 below 0.1": sweep[smallest][1]["kl"] < 0.1}


def check_09_learning_rate(prediction: dict | None, sweep: dict) -> bool | None:
    """prediction: {"best lr": one of the swept rates, "kl at 1e-6 below 0.1": bool}; `sweep` maps each learning
    rate to (its log, its checkup), as notebook 09 §4 builds it. The truth is read from the sweep once answered."""

    def body() -> str:
        if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
            raise _NotAttempted
        if not isinstance(prediction, dict) or sorted(prediction) != ["best lr", "kl at 1e-6 below 0.1"]:
            raise _Wrong("expected a dict with the keys 'best lr' and 'kl at 1e-6 below 0.1'")
        best = prediction["best lr"]
        if (
            isinstance(best, bool)
            or not isinstance(best, (int, float))
            or not any(math.isclose(best, lr, rel_tol=1e-9) for lr in sweep)
        ):
            raise _Wrong(f"best lr: answer one of the swept rates {sorted(sweep)}")
        if not isinstance(prediction["kl at 1e-6 below 0.1"], bool):
            raise _Wrong("kl at 1e-6 below 0.1: answer True or False")
        truth = _learning_rate_truth(sweep)
        shown = ", ".join(
            f"lr {lr:g}: gain {r['reward_gain']:+.3f}, KL {r['kl']:.3f}" for lr, (_, r) in sorted(sweep.items())
        )
        if not math.isclose(best, truth["best lr"], rel_tol=1e-9):
            raise _Wrong(f"best lr is not {best:g} ({shown}): read the gain column, then the KL beside it")
        if prediction["kl at 1e-6 below 0.1"] != truth["kl at 1e-6 below 0.1"]:
            raise _Wrong(f"the KL at the smallest rate: {shown}")
        return f"as measured: {shown}"

    return _verdict("learning-rate sweep", body)


check_09_learning_rate.truth = _learning_rate_truth
