"""Notebook 08's experiments: the loss variants side by side, on the bandit and on the real model,
and iterative (online) DPO against offline DPO at equal compute.

Everything here is a thin layer over the package: `losses.dpo_loss` for every
variant, `bandit.train_tabular_dpo` for the table, `train.train_dpo`,
`generation.sample_completions` for the model; the held-out measurements are
`evaluate.heldout_baseline` and `evaluate.evaluate_against`.

    VARIANTS, variants_table()        the registry as notebook 08 shows it: paper and the one line that differs
    flip_labels(...)                  label noise for the bandit: swap chosen and rejected of a random fraction
    train_variant(...)                a fresh policy from the reference, trained with one variant's settings
    dpo_round(...)                    one round of iterative DPO: sample from the policy, label, train (pi_ref fixed)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from . import losses
from .rewards import sentiment
from .stages import sample_pairs


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of notebook 08's registry: how to ask `losses.dpo_loss` for it, its paper, and its one line."""

    name: str
    settings: dict  # keyword arguments of losses.dpo_loss (loss_type and its parameters)
    paper: str
    differs: str  # the line that differs from DPO, h = log-ratio(y_w) - log-ratio(y_l)
    reference_free: bool = False


# label_smoothing, offset and sft_weight values are examples: each variant's own knob, set to show it acting
VARIANTS: tuple[Variant, ...] = (
    Variant("DPO", {"loss_type": "sigmoid"}, "Rafailov et al. 2023, arXiv:2305.18290", "-log σ(β h)"),
    Variant(
        "cDPO",
        {"loss_type": "sigmoid", "label_smoothing": 0.2},
        "Mitchell 2023 (a note on DPO with noisy preferences)",
        "-(1-ε) log σ(β h) - ε log σ(-β h)",
    ),
    Variant(
        "rDPO (robust)",
        {"loss_type": "robust", "label_smoothing": 0.2},
        "Chowdhury et al. 2024, arXiv:2403.00409",
        "(-(1-ε) log σ(β h) + ε log σ(-β h)) / (1-2ε)",
    ),
    Variant(
        "IPO",
        {"loss_type": "ipo"},
        "Azar et al. 2023, arXiv:2310.12036",
        "(h_avg - 1/(2β))², log-ratios divided by length",
    ),
    Variant("hinge (RSO)", {"loss_type": "hinge"}, "Liu et al. 2023, arXiv:2309.06657", "max(0, 1 - β h)"),
    Variant("ODPO", {"loss_type": "sigmoid", "offset": 0.5}, "Amini et al. 2024, arXiv:2402.10571", "-log σ(β h - Δ)"),
    Variant(
        "RPO",
        {"loss_type": "sigmoid", "sft_weight": 1.0},
        "Pang et al. 2024, arXiv:2404.19733",
        "-log σ(β h) + w NLL(y_w), NLL per chosen token",
    ),
    Variant(
        "SimPO",
        {"loss_type": "simpo", "simpo_gamma": 0.5},
        "Meng et al. 2024, arXiv:2405.14734",
        "-log σ(β (log π(y_w)/|y_w| - log π(y_l)/|y_l|) - γ)",
        reference_free=True,
    ),
    Variant(
        "ORPO",
        {"loss_type": "orpo"},
        "Hong et al. 2024, arXiv:2403.07691",
        "NLL(y_w) - β log σ(log odds(y_w) - log odds(y_l)), odds of the per-token mean",
        reference_free=True,
    ),
)


def variant(name: str) -> Variant:
    """The registry row called `name`; ValueError naming the known ones otherwise."""
    for row in VARIANTS:
        if row.name == name:
            return row
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(row.name for row in VARIANTS)}")


def variant_loss(
    row: Variant,
    policy_chosen,
    policy_rejected,
    ref_chosen,
    ref_rejected,
    beta: float,
    *,
    chosen_lengths=None,
    rejected_lengths=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`losses.dpo_loss` with the variant's settings (an offset number becomes a (B,) tensor)."""
    settings = dict(row.settings)
    if "offset" in settings:
        settings["offset"] = torch.full_like(policy_chosen, float(settings["offset"]))
    reference = (None, None) if row.reference_free else (ref_chosen, ref_rejected)
    return losses.dpo_loss(
        policy_chosen,
        policy_rejected,
        *reference,
        beta,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        **settings,
    )


def variants_table() -> str:
    """The registry as a markdown table: variant, `dpo_loss` settings, paper, the line that differs from DPO.

    Every `losses.LOSS_TYPES` entry appears in at least one row (tests/test_beyond.py checks it).
    """
    lines = ["| variant | `dpo_loss` settings | paper | the line that differs from DPO |", "|---|---|---|---|"]
    for row in VARIANTS:
        settings = ", ".join(f"{key}={value!r}" for key, value in row.settings.items())
        differs = row.differs.replace("|", "\\|")  # |y_w| inside a table cell
        lines.append(f"| {row.name} | `{settings}` | {row.paper} | {differs} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the bandit


def flip_labels(
    chosen: torch.Tensor, rejected: torch.Tensor, fraction: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Swap chosen and rejected in a random `fraction` of the pairs (each pair independently, probability `fraction`).

    Returns (chosen, rejected, flipped): new (N,) tensors and the (N,) bool mask of the swapped pairs.
    This is the noise model of cDPO and rDPO: each label is wrong with probability eps.
    """
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"fraction must be in [0, 0.5), got {fraction}")
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must have one shape")
    flipped = torch.rand(chosen.shape, generator=generator, dtype=torch.float64) < fraction
    return torch.where(flipped, rejected, chosen), torch.where(flipped, chosen, rejected), flipped


def noisy_preference_probability(probability: torch.Tensor, eps: float) -> torch.Tensor:
    """P(a labelled the winner) after flipping each label with probability eps: (1 - eps) p + eps (1 - p)."""
    return (1 - eps) * probability + eps * (1 - probability)


# ---------------------------------------------------------- the real model


def train_variant(model_source, tokenizer, pairs: list[dict], config, *, reference=None, device=None, log=None):
    """A fresh copy of the reference (`models.load_model(model_source)`), trained on `pairs` with `config`.

    reference: the (chosen, rejected) reference log-probs of `pairs` for this config
    (`train.compute_pair_logps`), shared by every variant trained from the same
    reference; ignored for reference-free loss types. Returns (policy, history).
    """
    from .models import load_model
    from .train import train_dpo

    policy, _ = load_model(model_source, device=device)
    if config.loss_type in losses.REFERENCE_FREE:
        reference = None
    history = train_dpo(policy, tokenizer, pairs, config, reference=reference, progress=False, log=log)
    return policy, history


def trajectory(history: Sequence[dict], key: str) -> list[float]:
    """One metric per optimizer step, e.g. trajectory(history, "rewards/chosen")."""
    return [row[key] for row in history]


def tail_mean(values: Sequence[float], last: int) -> float:
    """Mean of the last `last` values (all of them when there are fewer)."""
    values = list(values)[-last:]
    return sum(values) / len(values)


def label_pairs(
    policy,
    tokenizer,
    prompts: Sequence[str],
    *,
    per_prompt: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    min_gap: float,
    rule: str = "best_vs_worst",
    reward=sentiment,
) -> tuple[list[dict], dict]:
    """Sample `per_prompt` completions per prompt from `policy`, score them with `reward` (default VADER), pair them:
    `stages.sample_pairs`, the full run's own stage. Returns (pairs, counts); counts has "samples" and
    "sample_reward_mean" (the mean reward of all samples drawn)."""
    return sample_pairs(
        policy,
        tokenizer,
        prompts,
        reward,
        per_prompt=per_prompt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        rule=rule,
        min_gap=min_gap,
    )


def dpo_round(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    config,
    *,
    per_prompt: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    min_gap: float,
    reward=sentiment,
    log=None,
) -> dict[str, Any]:
    """One round of iterative (online) DPO, in place: sample from `policy`, label with `reward` (default VADER), train `policy`.

    The reference log-probs come from `reference` (the fixed pi_ref, never the
    round's starting policy), so every round pulls towards the same anchor.
    Returns {"pairs", "counts", "history"}.
    """
    from .train import compute_pair_logps, train_dpo

    pairs, counts = label_pairs(
        policy,
        tokenizer,
        prompts,
        per_prompt=per_prompt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        min_gap=min_gap,
        reward=reward,
    )
    reference_logps = compute_pair_logps(reference, tokenizer, pairs, config)
    history = train_dpo(policy, tokenizer, pairs, config, reference=reference_logps, progress=False, log=log)
    return {"pairs": pairs, "counts": counts, "history": history}


@torch.no_grad()
def prefix_scores(
    policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence[str], lengths: Sequence[int]
) -> dict[int, dict[str, float]]:
    """How DPO's and SimPO's scores of a response grow with its length.

    Each completion's first L tokens (for every L in `lengths`; completions shorter
    than max(lengths) are left out) are scored after its prompt. Returns, per L,
    the means over completions of "log_ratio" = log pi(y_:L) - log pi_ref(y_:L)
    (DPO's implicit reward / beta: a sum over tokens) and "mean_logp" =
    log pi(y_:L) / L (SimPO's reward / beta: a mean over tokens), and "n".
    """
    device = next(policy.parameters()).device
    longest = max(lengths)
    ratios: dict[int, list[float]] = {length: [] for length in lengths}
    means: dict[int, list[float]] = {length: [] for length in lengths}
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"][:longest]
        if len(completion_ids) < longest or not prompt_ids:
            continue
        ids = torch.tensor([prompt_ids + completion_ids], device=device)
        targets = ids[0, len(prompt_ids) :, None]
        token_logps = []
        for model in (policy, reference):
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()  # position t-1 predicts token t
            token_logps.append(torch.log_softmax(logits, -1).gather(1, targets)[:, 0].cumsum(0).cpu())
        for length in lengths:
            ratios[length].append((token_logps[0][length - 1] - token_logps[1][length - 1]).item())
            means[length].append(token_logps[0][length - 1].item() / length)
    return {
        length: {
            "log_ratio": sum(ratios[length]) / max(len(ratios[length]), 1),
            "mean_logp": sum(means[length]) / max(len(means[length]), 1),
            "n": len(ratios[length]),
        }
        for length in lengths
    }
