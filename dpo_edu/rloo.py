"""RLOO: REINFORCE with a leave-one-out baseline on notebook 02's KL-regularised objective (the RL step DPO skips).

Each step, for P prompts:

1. draw k >= 2 completions y_1..y_k of each prompt x from the current policy (the course's sampler);
2. score them with the reward function r (TRL's convention: the learned reward model or VADER);
3. put the KL penalty inside the reward, per sequence, as the RLOO paper (Ahmadian et al. 2024) and TRL do:
   R_i = r(x, y_i) - beta * (log pi(y_i|x) - log pi_ref(y_i|x));
4. baseline each by the mean of the OTHER k - 1 samples of its prompt:  A_i = R_i - mean_{j != i} R_j
   (unbiased, since that mean does not depend on y_i);
5. loss = -mean_i(A_i * log pi(y_i|x)), with log pi(y_i|x) from a forward pass WITH gradient (the sampler's own
   `Samples.logps` are detached), and one AdamW step.

R_i and A_i are constants (detached): the gradient is REINFORCE's, E[A * grad log pi]. On-policy with one update per
batch, TRL's clipped ratio objective has this same gradient (its ratio is 1 at the update).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from typing import Callable, ClassVar, Sequence

import torch

from .data import IGNORE_INDEX, prompt_text
from .evaluate import completion_logps
from .generation import Samples, sample_completions
from .logprobs import sequence_logprobs
from .lora import is_peft_model
from .reward_model import TRAINING_RANGES, at_least, check_config, epoch_batches, fit
from .rewards import RewardFunction, rewards_of
from .train import adapters_disabled
from .utils import pad_token_id


@dataclasses.dataclass(frozen=True)
class RLOOConfig:
    """Every knob of `train_rloo`, checked on creation (all problems in one ValueError, before any work)."""

    beta: float = 0.05  # the per-sequence KL penalty's weight
    k: int = 4  # samples per prompt, >= 2: the baseline of one is the mean of the others
    prompts_per_step: int = 8
    steps: int = 40
    max_new_tokens: int = 24
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    sample_batch_size: int = 64  # rows (prompts x samples) per decode batch of the sampler
    mixed_precision: str = "auto"  # dpo_edu.precision's names; the sampler follows it
    seed: int = 0

    RANGES: ClassVar[dict] = {
        **TRAINING_RANGES,
        "beta": at_least(0),
        "prompts_per_step": at_least(1),
        "steps": at_least(1),
        "max_new_tokens": at_least(1),
        "sample_batch_size": at_least(1),
        "k": (lambda k: k >= 2, ">= 2 (each sample's baseline is the mean reward of the prompt's other samples)"),
    }
    gradient_accumulation_steps: ClassVar[int] = 1  # what train.make_accelerator reads

    def __post_init__(self) -> None:
        check_config(self)


@dataclasses.dataclass
class RLOOLoss:
    """One batch of P prompts x k samples through `rloo_loss`: `loss` () with gradient; the rest (P, k), detached."""

    loss: torch.Tensor
    kl: torch.Tensor  # log pi(y|x) - log pi_ref(y|x), summed over the completion's tokens
    rewards: torch.Tensor  # R = r - beta * kl
    advantages: torch.Tensor  # R_i - mean_{j != i} R_j


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean_{j != i} R_j within each prompt: (P, k) -> (P, k), k >= 2. Equal to k / (k - 1) times
    R_i - mean_j R_j, so each prompt's advantages sum to 0."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"the leave-one-out baseline needs k >= 2 samples per prompt, got {k}")
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


def rloo_loss(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, rewards: torch.Tensor, beta: float
) -> RLOOLoss:
    """RLOO's loss on a batch: policy_logps (P, k) WITH gradient (log pi(y|x), summed over each completion),
    reference_logps (P, k), rewards (P, k) the reward function's r(x, y); beta >= 0.

    kl = policy - reference (detached); R = r - beta * kl; A = `leave_one_out_advantages`(R);
    loss = -mean(A * policy_logps).
    """
    kl = policy_logps.detach() - reference_logps
    shaped = rewards - beta * kl
    advantages = leave_one_out_advantages(shaped)
    return RLOOLoss(-(advantages * policy_logps).mean(), kl, shaped, advantages)


def samples_logps(model, samples: Samples, pad: int) -> torch.Tensor:
    """log pi(completion | prompt) of every sample, summed over its tokens (EOS included), WITH gradient: (N,).

    One forward pass over all N rows, prompt + completion right-padded (`pad`) with an attention mask, logits only
    from the first position that predicts a completion token (`logits_to_keep`), no KV cache.
    """
    rows = [prompt + completion for prompt, completion in zip(samples.prompt_ids, samples.completion_ids)]
    width, device = max(map(len, rows)), next(model.parameters()).device
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, (row, prompt) in enumerate(zip(rows, samples.prompt_ids)):
        input_ids[index, : len(row)], attention_mask[index, : len(row)] = torch.tensor(row), 1
        labels[index, len(prompt) : len(row)] = torch.tensor(row[len(prompt) :])
    keep = width - min(map(len, samples.prompt_ids)) + 1
    logits = model(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), logits_to_keep=keep, use_cache=False
    ).logits
    return sequence_logprobs(logits, labels[:, -keep:].to(device))


def train_rloo(
    model,
    tokenizer,
    prompts: Sequence,
    reward_fn: RewardFunction,
    config: RLOOConfig,
    *,
    reference=None,
    on_step: Callable[[dict], dict | None] | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train `model` in place with RLOO against `reward_fn` on `prompts`; return one record per step.

    `reference`: the frozen reference; None: the model as it is now (a peft model with its adapters disabled, any
    other model a frozen deep copy, made here). Each step takes the next `prompts_per_step` prompts of a seeded
    shuffle (a fresh one each pass) and samples k each with seed (config.seed, step). Records (`fit`): loss,
    reward (mean r), kl (mean per-sequence log-ratio: an estimate of KL(pi || pi_ref) from the policy's own
    samples), shaped_reward (mean r - beta * kl), length (mean completion tokens), seconds_sampling, grad_norm,
    lr, seconds, and what `on_step(record)` returns.
    """
    if not prompts:
        raise ValueError("train_rloo got no prompts")
    texts, pad = [prompt_text(tokenizer, prompt) for prompt in prompts], pad_token_id(tokenizer)
    if reference is None and not is_peft_model(model):
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    step_numbers = itertools.count(1)

    def reference_logps(samples: Samples) -> torch.Tensor:
        scorer = reference if reference is not None else model
        with adapters_disabled(model) if reference is None else torch.no_grad():
            return completion_logps(
                scorer, samples, batch_size=len(samples.texts), pad_token_id=pad, precision=config.mixed_precision
            )

    def step_loss(prepared, items: list[int]):
        started = time.perf_counter()
        samples = sample_completions(
            prepared,
            tokenizer,
            [texts[i] for i in items],
            per_prompt=config.k,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.sample_batch_size,
            seed=config.seed * 1_000_003 + next(step_numbers),
            precision=config.mixed_precision,
        )
        sampled = time.perf_counter() - started
        scores = rewards_of(reward_fn, [prompts[i] for i in items for _ in range(config.k)], samples.texts)
        shape = (len(items), config.k)
        out = rloo_loss(
            samples_logps(prepared, samples, pad).float().view(shape),
            reference_logps(samples).view(shape).to(next(prepared.parameters()).device),
            torch.tensor(scores).view(shape).to(next(prepared.parameters()).device),
            config.beta,
        )
        return out.loss, {
            "reward": sum(scores) / len(scores),
            "kl": out.kl.mean().item(),
            "shaped_reward": out.rewards.mean().item(),
            "length": sum(map(len, samples.completion_ids)) / len(samples.completion_ids),
            "seconds_sampling": sampled,
        }

    passes = -(-config.steps * config.prompts_per_step // len(prompts))
    steps = epoch_batches(
        len(prompts), config.prompts_per_step, epochs=passes, max_steps=config.steps, seed=config.seed
    )
    return fit(model, config, steps, step_loss, desc="RLOO", on_step=on_step, progress=progress)
