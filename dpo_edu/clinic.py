"""The DPO clinic (notebook 09): the symptoms practitioners meet, each reproduced on the real model by changing one thing.

Everything here is a small piece the notebook calls more than once; the runs themselves are the package's own
(`train.train_dpo`, `stages.sample_pairs`, `beyond.evaluate`). The one loop of its own, `faulty_steps`, exists
because the faults it reproduces (a reference computed by the live policy, every label masked, pure fp16) are what
`train_dpo` refuses or prevents; it uses the trainer's own loss (`train.pair_losses`) and metric line
(`train.StepMetrics`), so its log reads like the trainer's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from .data import IGNORE_INDEX
from .evaluate import mean_and_se
from .losses import dpo_loss
from .rewards import sentiment
from .train import (
    StepMetrics,
    TrainConfig,
    compute_pair_logps,
    left_as_it_was,
    pair_loader,
    pair_logps,
    pair_losses,
    usable_examples,
)
from .utils import pad_token_id

FAULTS = ("live_reference", "masked_labels", "pure_fp16")


def clinic_config(profile, **overrides) -> TrainConfig:
    """The healthy run's settings at `profile`'s sizes: float32, no warm-up, plain-text prompts."""
    settings = dict(
        beta=profile.clinic_beta,
        learning_rate=profile.clinic_learning_rate,
        batch_size=profile.clinic_batch_size,
        epochs=profile.clinic_epochs,
        warmup_steps=0,
        max_length=64,
        max_prompt_length=40,
        use_chat_template=False,
        mixed_precision="fp32",
        seed=profile.run_seed,
    )
    return TrainConfig(**{**settings, **overrides})


# ------------------------------------------------------------------------------------------ held-out DPO loss


def policy_logps(policy, tokenizer, pairs: list[dict], config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's (chosen, rejected) sequence log-probs of `pairs`, each (N,), without gradient.

    (`compute_pair_logps` is the same computation; here it is the live policy that is scored.)
    """
    return compute_pair_logps(policy, tokenizer, pairs, config)


def dpo_metrics(
    policy_logps_: tuple[torch.Tensor, torch.Tensor], reference_logps: tuple[torch.Tensor, torch.Tensor], beta: float
) -> dict[str, float]:
    """DPO loss, accuracy and both implicit rewards of a fixed set of N pairs, with standard errors over pairs."""
    losses, chosen, rejected = dpo_loss(*policy_logps_, *reference_logps, beta)
    out = {}
    for name, values in (
        ("loss", losses),
        ("chosen", chosen),
        ("rejected", rejected),
        ("accuracy", (chosen > rejected).float()),
    ):
        out[name], out[f"{name}_se"] = mean_and_se(values.tolist())
    return out


def heldout_loss(
    policy, tokenizer, pairs: list[dict], reference_logps, config: TrainConfig, *, every: int
) -> Callable[[dict], dict | None]:
    """An `on_step` hook for `train_dpo`: every `every` steps (and the last), the DPO loss on held-out `pairs`.

    Adds "eval/loss" and "eval/accuracy" to the step's record (TRL logs "eval_loss" likewise).
    """

    def on_step(record: dict) -> dict | None:
        if record["step"] % every and record["step"] != record["steps_total"]:
            return None
        metrics = dpo_metrics(policy_logps(policy, tokenizer, pairs, config), reference_logps, config.beta)
        return {"eval/loss": metrics["loss"], "eval/accuracy": metrics["accuracy"]}

    return on_step


# ------------------------------------------------------------------------------------------- faults train_dpo stops


class _OneProcess:
    """What `pair_losses` and `StepMetrics` ask of an accelerate Accelerator, for a plain loop on one device."""

    @staticmethod
    def autocast():
        return contextlib.nullcontext()

    @staticmethod
    def gather(values):
        return values


def _scattered(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """(size,) zeros with `values` (B,) at `index` (B,): a batch's log-probs where `pair_losses` looks them up."""
    return torch.zeros(size).index_copy(0, index.cpu(), values.detach().float().cpu())


def faulty_steps(
    model,
    tokenizer,
    pairs: list[dict],
    config: TrainConfig,
    *,
    fault: str,
    steps: int,
    metrics_path: str | Path | None = None,
) -> list[dict]:
    """`steps` DPO steps (AdamW, constant learning rate, clipping) with one fault that `train_dpo` does not allow.

    fault: "live_reference" (the reference log-probs computed by the model being trained, at every step: what
    passing the policy itself as the reference model does), "masked_labels" (every label masked, for the reference
    pass too, as a max_length that truncates every response away leaves them), or "pure_fp16" (gradients, weights
    and AdamW's moments in float16 with no loss scaling; the forward and backward stay in float32, because float16
    matmuls are emulated on CPUs and take minutes). Returns the step records (`train.METRIC_NAMES`), also appended
    to `metrics_path`.
    """
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    _, features = usable_examples(tokenizer, pairs, config, log=None)
    loader = pair_loader(features, config.micro_batch_size, pad_token_id(tokenizer), shuffle=True, seed=config.seed)
    history = []
    parameters = list(model.parameters())
    # pure fp16: AdamW keeps float16 weights and moments; each step's float32 gradients are cast to float16 first
    stepped = (
        [parameter.detach().half().requires_grad_() for parameter in parameters] if fault == "pure_fp16" else parameters
    )
    with left_as_it_was(model), contextlib.ExitStack() as stack:
        reference = compute_pair_logps(model, tokenizer, pairs, config) if fault == "pure_fp16" else None
        optimizer = torch.optim.AdamW(stepped, lr=config.learning_rate)
        metrics = StepMetrics(_OneProcess())
        out_file = stack.enter_context(open(metrics_path, "a", encoding="utf-8")) if metrics_path else None
        model.train()
        for step, batch in zip(range(1, steps + 1), itertools.chain.from_iterable(itertools.repeat(loader))):
            metrics.start()
            if fault == "masked_labels":
                batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
            if fault != "pure_fp16":  # the model scores the batch: live, or with every label masked (all sums 0)
                with torch.no_grad():
                    reference = tuple(
                        _scattered(side, batch["index"], len(features)) for side in pair_logps(model, batch)
                    )
            out = pair_losses(model, batch, reference, None, config, _OneProcess())
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            if fault == "pure_fp16":
                for parameter, half in zip(parameters, stepped):
                    half.grad = None if parameter.grad is None else parameter.grad.half()
            optimizer.step()
            optimizer.zero_grad()
            if fault == "pure_fp16":
                with torch.no_grad():
                    for parameter, half in zip(parameters, stepped):
                        parameter.copy_(half)
                        half.grad = None
            metrics.add(out, batch["attention_mask"])
            record = metrics.record(step=step, steps_total=steps, epoch=0, grad_norm=grad_norm, lr=config.learning_rate)
            history.append(record)
            if out_file:
                out_file.write(json.dumps(record) + "\n")
    return history


def sft_steps(model, tokenizer, pairs: list[dict], config: TrainConfig) -> list[float]:
    """Supervised fine-tuning on the chosen responses (prompt masked, EOS scored), one epoch, AdamW at
    config.learning_rate: returns the loss (mean NLL per response token) of each step."""
    _, features = usable_examples(tokenizer, pairs, config, log=None)
    loader = pair_loader(features, config.micro_batch_size, pad_token_id(tokenizer), shuffle=True, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    losses = []
    with left_as_it_was(model):
        model.train()
        for batch in loader:
            chosen_logps, _ = pair_logps(model, batch)
            tokens = (batch["labels"][: len(chosen_logps)] != IGNORE_INDEX).sum()
            loss = -chosen_logps.sum() / tokens
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------- fp16, measured


def fp16_first_update(gradients: Sequence[torch.Tensor], *, loss_scale: float = 2.0**16) -> dict[str, float]:
    """What float16 does to one step's float32 `gradients` (one tensor per parameter).

    Returns the share of nonzero gradient entries that become 0 in float16 without and with `loss_scale`, and the
    share of entries whose first AdamW update, bias-corrected, g / (sqrt(g^2) + eps) with eps = 1e-8, all in float16,
    is not finite (g^2 underflows below |g| ~ 2.4e-4, eps is 0). A lower bound for torch's AdamW, which first
    stores (1 - beta2) g^2 = 0.001 g^2, smaller still.
    """
    flat = torch.cat([gradient.detach().float().flatten() for gradient in gradients])
    nonzero = flat != 0
    lost = ((flat.half() == 0) & nonzero).sum() / nonzero.sum()
    lost_scaled = (((flat * loss_scale).half() == 0) & nonzero).sum() / nonzero.sum()
    half = flat.half()
    # AdamW's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected back to g and g^2; eps in float16 is 0
    update = half / ((half * half).sqrt() + torch.tensor(1e-8, dtype=torch.float16))
    return {
        "underflow": lost.item(),
        "underflow_scaled": lost_scaled.item(),
        "update_not_finite": (~torch.isfinite(update)).float().mean().item(),
        "eps_in_fp16": torch.tensor(1e-8, dtype=torch.float16).item(),
    }


# ------------------------------------------------------------------------------------------- samples and pairs


def repetition(texts: Sequence[str], tokenizer) -> float:
    """Mean over texts of the share of token bigrams that repeat an earlier bigram of the same text (0: none).

    Welleck et al.'s (2019) seq-rep-2, on the model's own tokens, so a run of newlines or of one word counts
    (whitespace-separated words would miss the first). Texts of fewer than 2 tokens are left out.
    """
    shares = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bigrams = list(zip(ids, ids[1:]))
        if bigrams:
            shares.append(1 - len(set(bigrams)) / len(bigrams))
    return sum(shares) / len(shares) if shares else 0.0


def length_gap(tokenizer, pairs: Sequence[dict]) -> tuple[float, float]:
    """Mean and SE over pairs of (tokens in chosen - tokens in rejected)."""

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return mean_and_se([tokens(pair["chosen"]) - tokens(pair["rejected"]) for pair in pairs])


def shorter_is_better(per_word: float, reward=sentiment) -> Callable[..., list[float]]:
    """A reward function (TRL's convention): `reward` minus `per_word` for every word of the completion."""

    def shorter_reward(prompts, completions, **kwargs) -> list[float]:
        scores = reward(prompts, completions, **kwargs)
        return [score - per_word * len(str(text).split()) for score, text in zip(scores, completions)]

    return shorter_reward


# ---------------------------------------------------------------------------------- SFT first: the bandit


def sft_first_bandit(*, beta: float = 1.0, steps: int = 200, learning_rate: float = 0.1) -> dict[str, dict]:
    """DPO on preferences among responses the reference rarely gives, from the reference and from an SFT'd one.

    Six responses with rewards 0, 0.1, 0.2, 0.3, 0.9, 1.0; the instruct reference puts 0.98 of its mass on the
    first four. The preference data compares only responses 3, 4 and 5 (written by someone else), every pair
    labelled by the reward. "SFT" refits the reference on those pairs' chosen responses (their frequencies, mixed
    1:9 with the reference). DPO (tabular, sigmoid, Adam) trains the same steps from each. Returns, per start,
    the expected reward and KL(policy || instruct reference) of the reference and the trained policy, and the
    policy's mass on responses 3-5.
    """
    from .bandit import reward_and_kl, train_tabular_dpo

    rewards = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.9, 1.0]], dtype=torch.float64)
    instruct = torch.tensor([[0.40, 0.30, 0.20, 0.08, 0.01, 0.01]], dtype=torch.float64)
    chosen = torch.tensor([4, 5, 5] * 20)
    rejected = torch.tensor([3, 3, 4] * 20)
    counts = torch.bincount(chosen, minlength=6).double()[None]
    refit = 0.9 * counts / counts.sum() + 0.1 * instruct
    prompts = torch.zeros(len(chosen), dtype=torch.long)
    results = {}
    for name, reference in (("instruct reference", instruct), ("SFT reference", refit)):
        policy, _ = train_tabular_dpo(
            reference, prompts, chosen, rejected, beta, steps=steps, learning_rate=learning_rate, record_every=steps
        )
        start_reward, start_kl = reward_and_kl(reference, instruct, rewards)
        end_reward, end_kl = reward_and_kl(policy, instruct, rewards)
        results[name] = {
            "reference_reward": start_reward.item(),
            "reference_kl": start_kl.item(),
            "reward": end_reward.item(),
            "kl": end_kl.item(),
            "mass_on_3_to_5": policy[0, 3:].sum().item(),
        }
    return results


def reward_per_nat(result: dict) -> float:
    """Held-out reward gained per nat of KL (beyond.evaluate's result); nan when the KL is not positive."""
    return result["reward_gain"] / result["kl"] if result["kl"] > 0 else math.nan


SHORT_NAMES = {
    "loss": "loss",
    "rewards/chosen": "chosen",
    "rewards/rejected": "rejected",
    "rewards/margins": "margin",
    "rewards/accuracies": "acc",
    "logps/chosen": "logp_c",
    "logps/rejected": "logp_r",
    "grad_norm": "grad",
    "lr": "lr",
    "eval/loss": "eval_loss",
}


def log_lines(
    history: Sequence[dict],
    keys: Sequence[str] = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "grad_norm",
        "lr",
    ),
    steps: Sequence[int] | None = None,
) -> str:
    """The log as a learner's terminal shows it: one line per step (all, or `steps`), rounded."""
    rows = [row for row in history if steps is None or row["step"] in steps]
    head = f"{'step':>4} " + " ".join(f"{SHORT_NAMES.get(key, key):>9}" for key in keys)

    def cell(row, key):
        value = row.get(key)
        return f"{'':>9}" if value is None else f"{value:>9.2e}" if key == "lr" else f"{value:>9.4f}"

    return "\n".join([head, *(f"{row['step']:>4} " + " ".join(cell(row, key) for key in keys) for row in rows)])
