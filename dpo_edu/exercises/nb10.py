"""Checkers for notebook 10 (DPO and the RLHF it replaces) exercises (see `dpo_edu.exercises`)."""

from __future__ import annotations

import math

from ._checking import _labelled_causes, _NotAttempted, _verdict, _Wrong

# ------------------------------------------------------------------ 10 §4: the best-of-N KL (derive)


def check_10_bon_kl(answer: dict | None) -> bool | None:
    """answer: {"N=4": KL(best-of-4 || reference) in nats when every answer's reward differs,
    "with ties": "above" or "below" (where the true KL lies against that formula when rewards can tie)}."""

    def body() -> str:
        if answer is None or (isinstance(answer, dict) and all(value is None for value in answer.values())):
            raise _NotAttempted
        if not isinstance(answer, dict) or sorted(answer) != ["N=4", "with ties"]:
            raise _Wrong("expected a dict with the keys 'N=4' and 'with ties'")
        value = answer["N=4"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Wrong("N=4: answer a number of nats")
        exact = math.log(4) - 3 / 4
        if math.isclose(value, math.log(4), abs_tol=1e-3):
            raise _Wrong(
                "N=4: log N is the KL of the best-of-N's largest density ratio, not its mean; integrate "
                "N F^(N-1) log(N F^(N-1)) dF over F from 0 to 1"
            )
        if not math.isclose(value, exact, abs_tol=1e-3):
            raise _Wrong(
                "N=4: the best-of-N density is N F^(N-1) times the reference's (F: the reward's CDF); "
                "its KL is the integral of N u^(N-1) log(N u^(N-1)) du over u in [0, 1]"
            )
        if answer["with ties"] not in ("above", "below"):
            raise _Wrong("with ties: answer 'above' or 'below'")
        if answer["with ties"] != "below":
            raise _Wrong(
                "with ties: tied answers share the pick, so the policy moves less from the reference than "
                "with distinct rewards (Beirami et al. 2024: the formula is an upper bound)"
            )
        return f"log 4 - 3/4 = {exact:.4f} nats, an upper bound once rewards can tie"

    return _verdict("best-of-N KL", body)


# ------------------------------------------------------------------ 10 §6: the frontier (predict)


def _frontier_truth(summary: dict) -> dict:
    """From the sweep's summary: which of DPO and RLOO against the true reward is higher at the smallest matched
    KL both reach, and whether RLOO against the reward model ended with a larger true-reward gain than against
    the true reward."""
    truth = {}
    for comparison in summary["matched_kl"]:
        if comparison["b"][1] == "rloo-gold" and comparison["at"]:
            truth["higher at matched KL"] = "dpo" if comparison["at"][0]["difference"] > 0 else "rloo-gold"
    finals = {row["method"]: row["gain"] for row in summary["final"] if row["setting"] == "all pairs"}
    if "rloo" in finals and "rloo-gold" in finals:
        truth["reward-model RLOO gains"] = "more" if finals["rloo"] > finals["rloo-gold"] else "less"
    return truth


def check_10_frontier(prediction: dict | None, summary: dict) -> bool | None:
    """prediction: {"higher at matched KL": "dpo" or "rloo-gold", "reward-model RLOO gains": "more" or "less"
    (true reward, last checkpoint, than RLOO against the true reward)}; `summary` is the sweep's. The truth is read
    from the summary once answered."""

    def body() -> str:
        if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
            raise _NotAttempted
        keys = ["higher at matched KL", "reward-model RLOO gains"]
        if not isinstance(prediction, dict) or sorted(prediction) != keys:
            raise _Wrong(f"expected a dict with the keys {keys}")
        if prediction["higher at matched KL"] not in ("dpo", "rloo-gold"):
            raise _Wrong("higher at matched KL: answer 'dpo' or 'rloo-gold'")
        if prediction["reward-model RLOO gains"] not in ("more", "less"):
            raise _Wrong("reward-model RLOO gains: answer 'more' or 'less'")
        truth = _frontier_truth(summary)
        if sorted(truth) != keys:
            raise _Wrong("this sweep has no DPO, RLOO and RLOO-gold curves to compare; run it with those methods")
        if prediction["higher at matched KL"] != truth["higher at matched KL"]:
            raise _Wrong("higher at matched KL: read the matched-KL table (DPO minus RLOO against the true reward)")
        if prediction["reward-model RLOO gains"] != truth["reward-model RLOO gains"]:
            raise _Wrong("reward-model RLOO: compare the two RLOO curves' last gains; what did the reward model learn?")
        return "as measured by this sweep"

    return _verdict("the frontier", body)


check_10_frontier.truth = _frontier_truth

# ------------------------------------------------------------------ 10 §3: three reward-model logs (diagnose)


def _epochs(losses, accuracies, heldout):
    return [
        {"epoch": epoch, "loss": loss, "accuracy": accuracy, "heldout_accuracy": held}
        for epoch, (loss, accuracy, held) in enumerate(zip(losses, accuracies, heldout), 1)
    ]


# Made up for the exercise (not logged by a run): per-epoch means of a Bradley-Terry reward model's training,
# with its accuracy on held-out pairs. Each log has one cause.
REWARD_MODEL_LOGS_10 = {
    "A": _epochs((0.693, 0.693, 0.693), (0.50, 0.50, 0.50), (0.50, 0.50, 0.50)),
    "B": _epochs((0.61, 0.21, 0.05), (0.68, 0.95, 1.00), (0.49, 0.47, 0.45)),
    "C": _epochs((0.74, 0.95, 1.31), (0.41, 0.22, 0.08), (0.44, 0.30, 0.21)),
}
_REWARD_MODEL_TRUTH = {"A": "not learning", "B": "memorising", "C": "labels swapped"}
_REWARD_MODEL_HINTS = {
    "not learning": "a model that learns nothing stays at loss ln 2 and accuracy one half, on train and held-out alike",
    "memorising": "memorising fits the training pairs ever better while held-out pairs stay at chance",
    "labels swapped": "swapped labels make the model learn the opposite preference: train accuracy falls below "
    "one half and the loss rises above ln 2",
}


def check_10_reward_model(causes: dict | None) -> bool | None:
    """causes: {"A", "B", "C": one of "not learning", "memorising", "labels swapped"} for REWARD_MODEL_LOGS_10."""

    def body() -> str:
        _labelled_causes(causes, _REWARD_MODEL_TRUTH, _REWARD_MODEL_HINTS)
        return "the training and the held-out accuracy, read together, tell the three apart"

    return _verdict("reward-model logs", body)
