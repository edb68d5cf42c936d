"""A Bradley-Terry reward model: the first stage of the RLHF pipeline that DPO replaces (notebook 10).

SmolLM2 with a scalar head (transformers' `AutoModelForSequenceClassification`, num_labels=1, as TRL's
`RewardTrainer` builds it), trained on the same (prompt, chosen, rejected) pairs DPO trains on, with notebook 01's
Bradley-Terry loss  -log sigmoid(r(x, y_w) - r(x, y_l)).

Which token is scored. The head reads the hidden state of each row's last token that is not the padding id
(`config.pad_token_id`, which must be set: `reward_model_from` and `load_reward_model` set it from the tokenizer).
A row is prompt + response + EOS, padded on the right, exactly as TRL's RewardTrainer tokenises a standard row
(the joined text, EOS appended). SmolLM2's pad id IS its EOS id, so there the score sits on the response's last
token; with a tokenizer whose pad differs from EOS it sits on the EOS. Both are what TRL does.

Also here: the loop every method of notebook 10 shares (`fit`: accelerate, AdamW, linear warm-up, clipping, a seeded
shuffle, one metrics record per step, `on_step` for evaluations, Ctrl-C stops after the step), a checked config
(`RewardConfig`), and the comparison with DPO's implicit reward beta * log(pi / pi_ref) ("your language model is
secretly a reward model", measured): held-out pair accuracy and Spearman rank agreement with the true reward.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from typing import Any, Callable, ClassVar, Sequence, get_args, get_type_hints

import torch

from .bradley_terry import reward_model_loss
from .data import format_prompt, prompt_text
from .evaluate import completion_logps, mean_and_se
from .generation import Samples
from .precision import autocast, precision_problem
from .rewards import _text
from .train import (
    TrainConfig,
    TrainingStopped,
    adamw,
    capped_warmup,
    compute_pair_logps,
    left_as_it_was,
    make_accelerator,
)
from .utils import eval_mode, pad_token_id, seed_everything

# ------------------------------------------------------------ checked configs (RewardConfig, RLOOConfig, SFTConfig)


def at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f">= {low}"


def above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value > low), f"> {low}"


def _wrong_type(kind: type, value: Any) -> bool:
    """Whether `value` is not a `kind`: a bool is no number, a float must be finite (an int will do)."""
    if kind is bool or isinstance(value, bool):
        return not (kind is bool and isinstance(value, bool))
    if kind is float:
        return not (isinstance(value, int) or isinstance(value, float) and math.isfinite(value))
    return not isinstance(value, kind)


def check_config(config) -> None:
    """Check every field of a dataclass config against its annotation, its class's RANGES and, for mixed_precision,
    dpo_edu.precision's names;
    all problems in one ValueError naming the class ("invalid RewardConfig: batch_size must be >= 1, got 0")."""
    hints, problems = get_type_hints(type(config)), []
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        kinds = set(get_args(hints[name]) or [hints[name]])
        if value is None and type(None) in kinds:
            continue
        (kind,) = kinds - {type(None)}
        if _wrong_type(kind, value):
            problems.append(f"{name} must be {'None or ' * (type(None) in kinds)}{kind.__name__}, got {value!r}")
        elif name == "mixed_precision" and precision_problem(value, name):
            problems.append(precision_problem(value, name))
        elif name in config.RANGES and not config.RANGES[name][0](value):
            problems.append(f"{name} must be {config.RANGES[name][1]}, got {value!r}")
    if problems:
        raise ValueError(f"invalid {type(config).__name__}: " + "; ".join(problems))


TRAINING_RANGES = {
    "learning_rate": above(0),
    "weight_decay": at_least(0),
    "batch_size": at_least(1),
    "epochs": at_least(1),
    "max_steps": at_least(1),
    "warmup_steps": at_least(0),
    "max_grad_norm": above(0),
    "max_length": at_least(2),
    "max_prompt_length": at_least(1),
    "seed": (lambda seed: 0 <= seed < 2**32, "in [0, 2**32)"),
}


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Every knob of `train_reward_model`, checked on creation (all problems in one ValueError).

    The loss is TRL RewardTrainer's: mean over the batch of -log sigmoid(r_w - r_l), plus, when
    `center_rewards_coefficient` is set, that coefficient times mean((r_w + r_l) ** 2) (keeps rewards near 0).
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8  # pairs per optimizer step
    epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0  # linear warm-up, capped below the run's length
    max_grad_norm: float = 1.0
    max_length: int = 128  # tokens of prompt + response + EOS; longer rows keep their last tokens (the scored end)
    center_rewards_coefficient: float | None = None
    # False: the body stays as loaded and only the scalar head trains (a linear probe of the last token's hidden
    # state), each row's features computed once
    train_body: bool = True
    use_chat_template: bool = False  # the course's prompts are text to continue (dpo_edu.stages.train_config)
    mixed_precision: str = "auto"  # dpo_edu.precision's names: auto, fp32, bf16, fp16
    seed: int = 0

    RANGES: ClassVar[dict] = {**TRAINING_RANGES, "center_rewards_coefficient": at_least(0)}
    gradient_accumulation_steps: ClassVar[int] = 1  # what train.make_accelerator reads

    def __post_init__(self) -> None:
        check_config(self)


# ------------------------------------------------------------ the shared loop


def epoch_batches(n_items: int, batch_size: int, *, epochs: int, max_steps: int | None, seed: int) -> list[list[int]]:
    """The items of every optimizer step: each epoch a fresh shuffle of range(n_items) (one torch generator seeded
    by `seed`), cut into batches of `batch_size` (the last may be smaller), at most `max_steps` of them."""
    generator, steps = torch.Generator().manual_seed(seed), []
    for _ in range(epochs):
        order = torch.randperm(n_items, generator=generator).tolist()
        steps += [order[start : start + batch_size] for start in range(0, n_items, batch_size)]
    return steps[:max_steps]


StepLoss = Callable[[Any, list[int]], tuple[torch.Tensor, dict[str, float]]]


def fit(
    model,
    config,
    steps: Sequence[list[int]],
    step_loss: StepLoss,
    *,
    desc: str,
    on_step: Callable[[dict], dict | None] | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train `model` in place, one optimizer step per entry of `steps`; return one record per step.

    `step_loss(model, items)` -> (loss () with gradient, its metrics as floats) for the items of one step; it runs
    under accelerate's autocast, with `model` prepared by accelerate and in train mode. AdamW (`config`'s
    learning_rate and weight_decay; only parameters that train), linear warm-up then decay, gradient clipping at
    max_grad_norm. A record: step, steps_total, loss, step_loss's metrics, grad_norm, lr, seconds (the step's
    time, evaluations excluded), then what `on_step(record)` returns. The model comes back in its own train/eval
    mode and forward. A non-finite loss stops before its update, and Ctrl-C after the current step, both with
    TrainingStopped, whose `.history` holds the records so far (no checkpoint is kept: runs are minutes long).
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .checkpoint import interrupt_flag

    seed_everything(config.seed)
    accelerator, history = make_accelerator(config), []
    with contextlib.ExitStack() as stack:
        stack.enter_context(left_as_it_was(model))
        prepared, optimizer = accelerator.prepare(model, adamw(model, config))
        scheduler = get_scheduler(
            "linear",
            optimizer,
            num_training_steps=len(steps),
            num_warmup_steps=capped_warmup(config.warmup_steps, len(steps)),
        )
        interrupted = stack.enter_context(interrupt_flag())
        bar = stack.enter_context(tqdm(total=len(steps), desc=desc, disable=not progress))
        for number, items in enumerate(steps, 1):
            started = time.perf_counter()
            prepared.train()
            with accelerator.autocast():
                loss, metrics = step_loss(prepared, items)
            if not torch.isfinite(loss):
                raise _stopped(f"non-finite loss ({loss.item()}) at step {number}; lower the learning rate", history)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(prepared.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            record = {
                "step": number,
                "steps_total": len(steps),
                "loss": loss.item(),
                **metrics,
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - started,
            }
            scheduler.step()
            bar.update(1)
            record.update((on_step(record) or {}) if on_step else {})
            history.append(record)
            if interrupted() and number < len(steps):
                raise _stopped(
                    f"interrupted after step {number} of {len(steps)}; the model keeps those updates "
                    "(no checkpoint: run again to redo it)",
                    history,
                )
    return history


def _stopped(message: str, history: list[dict]) -> TrainingStopped:
    error = TrainingStopped(message)
    error.history = history
    return error


# ------------------------------------------------------------ the model


def reward_model_from(policy, tokenizer, *, seed: int = 0):
    """A reward model with `policy`'s body (a copy of its weights) and a fresh scalar head, in float32 on its device.

    `policy` is a causal LM (the tiny test models, or the course's loaded policy); the result is the same
    architecture's ForSequenceClassification (num_labels=1), its head drawn as transformers initialises it
    (normal, std initializer_range) under `seed`, and config.pad_token_id set from `tokenizer`.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id(tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    body = policy.base_model_prefix
    missing, unexpected = model.load_state_dict(
        {key: value for key, value in policy.state_dict().items() if key.startswith(body + ".")}, strict=False
    )
    if [key for key in missing if not key.startswith("score.")] or unexpected:
        raise ValueError(
            f"{type(policy).__name__}'s body does not fit {type(model).__name__}: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.to(next(policy.parameters()).device)


def load_reward_model(name_or_path=None, *, device=None, seed: int = 0):
    """(reward model, tokenizer): the course's model (or `name_or_path`, resolved as `dpo_edu.models.load_model`
    does) loaded with `AutoModelForSequenceClassification(num_labels=1)`, float32, its head fresh under `seed`,
    config.pad_token_id set from the tokenizer (the head needs it to find each row's last token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .models import _loadable
    from .utils import get_device, quiet_transformers

    where = _loadable(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(where)
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no "LOAD REPORT: score.weight MISSING": a fresh head is the point here
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                where, num_labels=1, dtype="float32", pad_token_id=pad_token_id(tokenizer)
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device or get_device()), tokenizer


def reward_row_ids(
    tokenizer, prompt, completion: str, *, max_length: int | None = None, use_chat_template: bool = False
) -> list[int]:
    """The ids a reward model scores: the prompt as the model sees it, the completion, EOS, tokenised as one text
    (TRL RewardTrainer's standard rows); a row over `max_length` keeps its last tokens, where the score is read."""
    text = (
        prompt_text(tokenizer, prompt)
        if not isinstance(prompt, str)
        else format_prompt(tokenizer, prompt, use_chat_template=use_chat_template)
    )
    completion = completion.lstrip() if text[-1:].isspace() else completion  # as dpo_edu.data.tokenize_pair
    ids = tokenizer(text + completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids[-max_length:] if max_length else ids


def _padded(rows: list[list[int]], pad: int, device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids (B, T) and attention_mask (B, T)."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)], attention_mask[index, : len(row)] = torch.tensor(row), 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


@torch.no_grad()
def last_token_features(model, rows: list[list[int]], pad: int, *, batch_size: int = 64) -> torch.Tensor:
    """The body's last hidden state at the token the head reads (the rightmost one that is not `pad`, as
    transformers' ForSequenceClassification picks it) for each row: (N, H), no gradient."""
    body, device, out = getattr(model, model.base_model_prefix), next(model.parameters()).device, []
    for start in range(0, len(rows), batch_size):
        batch = _padded(rows[start : start + batch_size], pad, device)
        hidden = body(**batch, use_cache=False).last_hidden_state
        positions = torch.arange(hidden.shape[1], device=device)
        last = (positions * (batch["input_ids"] != pad)).argmax(-1)
        out.append(hidden[torch.arange(len(last), device=device), last])
    return torch.cat(out)


def _rewards(model, rows: list[list[int]], pad: int) -> torch.Tensor:
    """The model's scalar of each row: (B,) float32, with the graph (the caller decides about gradients)."""
    if model.config.pad_token_id is None:
        raise ValueError(
            "the reward model's config has no pad_token_id, so its head cannot find each row's last "
            "token; build it with reward_model_from / load_reward_model, or set model.config.pad_token_id"
        )
    device = next(model.parameters()).device
    return model(**_padded(rows, pad, device), use_cache=False).logits.squeeze(-1).float()


@torch.no_grad()
def score(
    model,
    tokenizer,
    prompts: Sequence,
    completions: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    use_chat_template: bool = False,
    precision: str = "auto",
) -> torch.Tensor:
    """The reward model's r(x, y) of each (prompt, completion): (N,) float32 on CPU, in eval mode (the model's
    own mode after). Rows as in training (`reward_row_ids`); `precision` is the autocast setting."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    rows = [
        reward_row_ids(tokenizer, p, c, max_length=max_length, use_chat_template=use_chat_template)
        for p, c in zip(prompts, completions)
    ]
    device, out = next(model.parameters()).device, torch.zeros(len(rows))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    with eval_mode(model), autocast(device, precision):
        for start in range(0, len(rows), batch_size):
            batch = order[start : start + batch_size]
            out[batch] = _rewards(model, [rows[i] for i in batch], pad_token_id(tokenizer)).cpu()
    return out


class RewardModelFunction:
    """A trained reward model as a reward function in TRL's convention: reward(prompts, completions, **kwargs)
    -> list[float] (a conversational completion is scored by its last message), so RLOO and best-of-N take it
    as they take `dpo_edu.rewards.sentiment`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        use_chat_template: bool = False,
        precision: str = "auto",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.options = dict(
            batch_size=batch_size, max_length=max_length, use_chat_template=use_chat_template, precision=precision
        )
        self.__name__ = "reward_model"  # how dpo_edu.rewards names it in messages

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        texts = [_text(completion) for completion in completions]
        return score(self.model, self.tokenizer, prompts, texts, **self.options).tolist()


# ------------------------------------------------------------ training


def train_reward_model(
    model,
    tokenizer,
    pairs: list[dict],
    config: RewardConfig,
    *,
    on_step: Callable[[dict], dict | None] | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train reward model `model` in place on `pairs` ({"prompt", "chosen", "rejected"}); the metrics per step.

    Per step: `config.batch_size` pairs (a seeded shuffle each epoch), chosen and rejected rows in one forward pass,
    the Bradley-Terry loss (`RewardConfig`). Records (`fit`): loss, accuracy (r_w > r_l), margin (mean r_w - r_l),
    chosen and rejected (mean rewards), grad_norm, lr, seconds, and what `on_step` returns.
    """
    if not pairs:
        raise ValueError("train_reward_model got no pairs")

    def row_ids(pair: dict, side: str) -> list[int]:
        return reward_row_ids(
            tokenizer,
            pair["prompt"],
            pair[side],
            max_length=config.max_length,
            use_chat_template=config.use_chat_template,
        )

    rows = [(row_ids(pair, "chosen"), row_ids(pair, "rejected")) for pair in pairs]
    pad = pad_token_id(tokenizer)
    if not config.train_body:
        model.requires_grad_(False)
        model.score.requires_grad_(True)
        features = last_token_features(model, [row for pair in rows for row in pair], pad)  # (2P, H): w, l, w, l..

    def step_loss(prepared, items: list[int]):
        if not config.train_body:
            picked = torch.tensor([2 * i for i in items] + [2 * i + 1 for i in items])
            rewards = model.score(features[picked]).squeeze(-1).float()
        else:
            rewards = _rewards(prepared, [rows[i][0] for i in items] + [rows[i][1] for i in items], pad)
        chosen, rejected = rewards.chunk(2)
        loss = bradley_terry_loss(chosen, rejected, config.center_rewards_coefficient)
        margins = (chosen - rejected).detach()
        return loss, {
            "accuracy": (margins > 0).float().mean().item(),
            "margin": margins.mean().item(),
            "chosen": chosen.detach().mean().item(),
            "rejected": rejected.detach().mean().item(),
        }

    steps = epoch_batches(
        len(rows), config.batch_size, epochs=config.epochs, max_steps=config.max_steps, seed=config.seed
    )
    return fit(model, config, steps, step_loss, desc="reward model", on_step=on_step, progress=progress)


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, center_rewards_coefficient: float | None = None
) -> torch.Tensor:
    """mean(-log sigmoid(r_w - r_l)) [+ c * mean((r_w + r_l) ** 2)]: chosen, rejected (B,) -> (), as TRL's
    RewardTrainer.compute_loss (notebook 01's `reward_model_loss`, plus its optional centring term)."""
    loss = reward_model_loss(chosen, rejected)
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


# ------------------------------------------------------------ learned against implicit reward, measured


def pair_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float]) -> dict[str, float]:
    """How a reward ranks held-out pairs: accuracy (share with r_w > r_l, a tie counts 0, as TRL counts it),
    margin mean(r_w - r_l) and its SE, n. Inputs (P,) each."""
    margins = [c - r for c, r in zip(chosen_rewards, rejected_rewards, strict=True)]
    margin, margin_se = mean_and_se(margins)
    return {
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "margin": margin,
        "margin_se": margin_se,
        "n": len(margins),
    }


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of x and y (N,): Pearson's of their ranks, ties given their mean rank;
    nan when either is constant (scipy is not a dependency of the course)."""

    def ranks(values: Sequence[float]) -> torch.Tensor:
        values = torch.as_tensor(values, dtype=torch.float64)
        below = (values[None, :] < values[:, None]).sum(1)
        ties = (values[None, :] == values[:, None]).sum(1)
        return below + (ties + 1) / 2  # 1-based mean rank of each value's tie group

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return float(rx @ ry / denominator) if denominator > 0 else math.nan


def rank_agreement(rewards: Sequence[float], truth: Sequence[float], per_prompt: int) -> dict[str, float]:
    """Spearman of `rewards` with the true reward on N samples, `per_prompt` consecutive samples per prompt:
    "spearman" over all samples, and "spearman_within" the mean over prompts of the within-prompt Spearman
    (prompts where either is constant left out; nan if all are). DPO's implicit reward is r(x, y) only up to
    beta * log Z(x), a constant per prompt: only the within-prompt ranking is its to get right."""
    if len(rewards) != len(truth) or len(rewards) % per_prompt:
        raise ValueError(f"{len(rewards)} rewards and {len(truth)} true rewards, in groups of {per_prompt}")
    within = [
        spearman(rewards[i : i + per_prompt], truth[i : i + per_prompt]) for i in range(0, len(truth), per_prompt)
    ]
    within = [value for value in within if not math.isnan(value)]
    return {"spearman": spearman(rewards, truth), "spearman_within": sum(within) / len(within) if within else math.nan}


def implicit_pair_rewards(
    policy, reference, tokenizer, pairs: list[dict], beta: float, *, max_length: int = 128, max_prompt_length: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit reward beta * (log pi(y|x) - log pi_ref(y|x)) of each pair's chosen and rejected reply: (P,)
    each, tokenised as DPO trains (`dpo_edu.data.tokenize_pair`, plain text). Raises ValueError when a pair cannot be
    tokenised that way (make_pairs' pairs always can)."""
    config = TrainConfig(
        beta=beta,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        use_chat_template=False,
        mixed_precision="fp32",
    )
    (policy_w, policy_l), (ref_w, ref_l) = (
        compute_pair_logps(model, tokenizer, pairs, config) for model in (policy, reference)
    )
    if len(policy_w) != len(pairs):
        raise ValueError(f"{len(pairs) - len(policy_w)} of {len(pairs)} pairs cannot be tokenised as DPO trains")
    return beta * (policy_w - ref_w), beta * (policy_l - ref_l)


def implicit_sample_rewards(
    policy, reference, tokenizer, samples: Samples, beta: float, *, batch_size: int = 32, precision: str = "auto"
) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi(y|x) - log pi_ref(y|x)) of every sample (its own token ids): (N,)."""
    pad = pad_token_id(tokenizer)
    policy_logps, reference_logps = (
        completion_logps(model, samples, batch_size=batch_size, pad_token_id=pad, precision=precision)
        for model in (policy, reference)
    )
    return beta * (policy_logps - reference_logps)


def compare_rewards(
    reward_model,
    policy,
    reference,
    tokenizer,
    heldout_pairs: list[dict],
    samples: Samples,
    true_rewards: Sequence[float],
    beta: float,
) -> dict[str, dict[str, float]]:
    """The learned reward model beside DPO's implicit reward: {"reward_model": ..., "implicit": ...}, each with
    held-out pair accuracy and margin (`pair_accuracy`) and rank agreement with the true reward on `samples`
    (`rank_agreement`: fresh samples, `samples.per_prompt` per prompt, `true_rewards` (N,) their true rewards)."""
    prompts = [pair["prompt"] for pair in heldout_pairs]
    learned_w = score(reward_model, tokenizer, prompts, [pair["chosen"] for pair in heldout_pairs])
    learned_l = score(reward_model, tokenizer, prompts, [pair["rejected"] for pair in heldout_pairs])
    implicit_w, implicit_l = implicit_pair_rewards(policy, reference, tokenizer, heldout_pairs, beta)
    learned = score(
        reward_model,
        tokenizer,
        [samples.prompts[i // samples.per_prompt] for i in range(len(samples.texts))],
        samples.texts,
    )
    implicit = implicit_sample_rewards(policy, reference, tokenizer, samples, beta)
    return {
        name: {
            **pair_accuracy(chosen.tolist(), rejected.tolist()),
            **rank_agreement(on_samples.tolist(), list(true_rewards), samples.per_prompt),
        }
        for name, chosen, rejected, on_samples in (
            ("reward_model", learned_w, learned_l, learned),
            ("implicit", implicit_w, implicit_l, implicit),
        )
    }
