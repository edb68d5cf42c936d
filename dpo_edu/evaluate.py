"""Measure a policy against its reference on held-out prompts.

Three numbers, as in the DPO paper's sentiment experiment:

* mean reward (VADER) of the policy's samples, with its standard error;
* win rate: on each held-out prompt the policy's sample against an
  independent sample of the reference (ties count one half);
* the sequence-level KL(policy || reference), estimated from the policy's own
  samples y ~ pi(.|x):  KL = E_x E_y [log pi(y|x) - log pi_ref(y|x)].
  The samples stop at EOS or after max_new_tokens tokens, so this is the KL of
  the two distributions over such truncated completions, which is a KL all the
  same: non-negative, and 0 only when the two agree. Its estimate is a mean of
  per-sample log-ratios, which can be negative: near 0 the estimate can dip
  below 0 by chance, so it is always printed with its standard error
  (`format_kl`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from .data import IGNORE_INDEX
from .generation import Samples, sample_completions
from .logprobs import sequence_logprobs
from .precision import autocast
from .rewards import sentiment_rewards
from .utils import eval_mode, pad_token_id

# Sequences per forward pass in the KL's log-probs (at most): 32 completions of ~45 tokens already make large
# matrix products; more rows only add memory (the logits are rows x tokens x 49,152 floats: 200 MB at 32 rows).
LOGPS_BATCH_SIZE = 32


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Sample mean and its standard error (sample SD / sqrt(n)); SE is nan for n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_and_se of no values")
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def format_kl(kl: float, kl_se: float) -> str:
    """'KL 7.42 ± 0.24 nats'; a negative estimate says why it can be negative."""
    text = f"KL {kl:.2f} ± {kl_se:.2f} nats" if math.isfinite(kl_se) else f"KL {kl:.2f} nats"
    if kl < 0:
        text += " (a Monte-Carlo estimate: the true KL is >= 0, this sample's mean fell below it by chance)"
    return text


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Fraction of paired samples where the policy's reward is higher; a tie counts 1/2."""
    if len(policy_rewards) != len(reference_rewards) or not policy_rewards:
        raise ValueError(
            f"win_rate needs two equally long, non-empty lists, got {len(policy_rewards)} and {len(reference_rewards)}"
        )
    wins = sum((p > r) + 0.5 * (p == r) for p, r in zip(policy_rewards, reference_rewards))
    return wins / len(policy_rewards)


def _batches_by_prompt_length(samples: Samples, batch_size: int) -> Iterator[list[int]]:
    """Indices of the samples in batches of at most `batch_size` whose prompts all have one token length.

    Within a length, samples with similar completion lengths are batched together.
    """
    order = sorted(
        range(len(samples.completion_ids)), key=lambda i: (len(samples.prompt_ids[i]), len(samples.completion_ids[i]))
    )
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or len(samples.prompt_ids[i]) != len(samples.prompt_ids[batch[0]])):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def completion_logps(
    model, samples: Samples, *, batch_size: int = 32, pad_token_id: int = 0, precision: str = "auto"
) -> torch.Tensor:
    """log pi(completion | prompt) of every sample under `model`, summed over the completion's tokens: (N,) on CPU.

    Uses the sampled token ids themselves (not a re-tokenisation of the text),
    so the policy's and the reference's log-probs are of exactly the same sequence.
    The prompts of a batch have one length (`_batches_by_prompt_length`), so
    every completion starts at the same position P and only completions are
    padded, on the right (where a causal model's real tokens never look, so no
    attention mask is needed); the LM head runs only on positions P-1 to the
    end, which predict the completion tokens (`logits_to_keep`).
    """
    device = next(model.parameters()).device
    out = torch.zeros(len(samples.completion_ids))
    for rows in _batches_by_prompt_length(samples, batch_size):
        n_prompt = len(samples.prompt_ids[rows[0]])
        n_completion = max(len(samples.completion_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), n_prompt + n_completion), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), 1 + n_completion), IGNORE_INDEX, dtype=torch.long)  # positions P-1 .. P+C-1
        for row, i in enumerate(rows):
            completion = torch.tensor(samples.completion_ids[i])
            input_ids[row, :n_prompt] = torch.tensor(samples.prompt_ids[i])
            input_ids[row, n_prompt : n_prompt + len(completion)] = completion
            labels[row, 1 : 1 + len(completion)] = completion
        with eval_mode(model), autocast(device, precision):  # eval mode: no dropout; the caller's mode after
            logits = model(input_ids=input_ids.to(device), logits_to_keep=1 + n_completion).logits  # (rows, 1 + C, V)
        out[rows] = sequence_logprobs(logits.float(), labels.to(device)).cpu()
    return out


def log_ratios(
    policy, reference, tokenizer, samples: Samples, *, batch_size: int = 64, precision: str = "auto"
) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) of every sample y (drawn from `policy`): their mean estimates KL(policy || reference).

    `reference=None` means the policy IS the reference: every ratio is 0 exactly. The policy's log-probs are the
    sampler's own (`samples.logps`, from the logits each token was drawn from) where it kept them; only the
    reference scores the samples.
    """
    if reference is None:
        return [0.0] * len(samples.completion_ids)
    rows = max(1, min(batch_size // 2, LOGPS_BATCH_SIZE))
    pad = pad_token_id(tokenizer)
    if samples.logps is not None:
        policy_logps = torch.tensor(samples.logps, dtype=torch.float64)
    else:
        policy_logps = completion_logps(
            policy, samples, batch_size=rows, pad_token_id=pad, precision=precision
        ).double()
    reference_logps = completion_logps(reference, samples, batch_size=rows, pad_token_id=pad, precision=precision)
    return (policy_logps - reference_logps.double()).tolist()


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    reference_rewards: Sequence[float],
    *,
    score: Callable[[list[str]], list[float]] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    precision: str = "auto",
) -> dict:
    """Sample one completion per prompt from `policy`; score it, and compare with the reference.

    `reference_rewards[i]` is the reward of the reference's own sample for
    prompts[i] (drawn once, before training, with another seed). `score(texts)`
    gives the reward of each completion of `prompts`, in order (default: VADER,
    `dpo_edu.rewards.sentiment_rewards`; `dpo_edu.stages.scorer` binds a TRL-style
    reward function to the prompts). `reference` is the frozen reference model,
    used only to score the policy's samples for the KL; pass None when the policy
    IS the reference (KL is then 0 exactly). `precision` is the autocast setting
    of the sampling and the log-probs (`dpo_edu.utils.autocast`). Returns a dict
    of floats (reward_mean, reward_se, reward_gain, reward_gain_se, win_rate, kl,
    kl_se) and "samples" (the policy's texts), "rewards" and "lengths" (tokens of
    each completion, its EOS included).
    """
    if len(reference_rewards) != len(prompts):
        raise ValueError(f"{len(reference_rewards)} reference rewards for {len(prompts)} prompts")
    samples = sample_completions(
        policy, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, precision=precision
    )
    rewards = (score or sentiment_rewards)(samples.texts)
    reward_mean, reward_se = mean_and_se(rewards)
    gain, gain_se = mean_and_se([p - r for p, r in zip(rewards, reference_rewards)])
    kl, kl_se = mean_and_se(
        log_ratios(policy, reference, tokenizer, samples, batch_size=batch_size, precision=precision)
    )
    return {
        "reward_mean": reward_mean,
        "reward_se": reward_se,
        "reward_gain": gain,
        "reward_gain_se": gain_se,
        "win_rate": win_rate(rewards, reference_rewards),
        "kl": kl,
        "kl_se": kl_se,
        "samples": samples.texts,
        "rewards": rewards,
        "lengths": [len(ids) for ids in samples.completion_ids],
    }
