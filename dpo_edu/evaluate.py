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

Everything a course run measures lives here:

    evaluate_policy(...)               the three numbers for one policy against the reference's answers
    heldout_baseline(...)              the reference's answers to held-out prompts, drawn once and scored
    evaluate_against(...)     evaluate_policy against such a baseline, with completion lengths (08, 09)
    RewardEvaluator, PairsEvaluator    what a run calls during training: on held-out prompts with a reward, or on
                                       held-out preference pairs (implicit-reward accuracy and margins) without one
    implicit_rewards(history)          what training did to each side of the margin, from the metrics rows
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from .data import IGNORE_INDEX, prompt_text
from .generation import Samples, sample_completions
from .logprobs import sequence_logprobs
from .models import load_model
from .precision import autocast
from .report import with_se
from .rewards import RewardFunction, rewards_of, scorer, sentiment, sentiment_rewards
from .train import TrainConfig, compute_pair_logps, usable_examples
from .utils import eval_mode, pad_token_id

# Sequences per forward pass in the KL's log-probs (at most): 32 completions of ~45 tokens already make large
# matrix products; more rows only add memory (the logits are rows x tokens x 49,152 floats: 200 MB at 32 rows).
LOGPS_BATCH_SIZE = 32
# what the evaluators report at each evaluation, as "eval/<key>" in metrics.jsonl
REWARD_EVAL_KEYS = ("reward_mean", "reward_se", "reward_gain", "reward_gain_se", "win_rate", "kl", "kl_se")
PAIR_EVAL_KEYS = ("accuracy", "margin", "margin_se", "chosen_reward", "rejected_reward", "kl", "kl_se")


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
    `dpo_edu.rewards.sentiment_rewards`; `dpo_edu.rewards.scorer` binds a TRL-style
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


# ------------------------------------------------------------ the reference's answers, drawn once; a policy against them


def length_summary(lengths: Sequence[int], max_new_tokens: int) -> dict[str, float]:
    """Mean tokens per completion (EOS included) and the share that ran to the limit instead of ending with EOS."""
    lengths = list(lengths)
    if not lengths:
        raise ValueError("no lengths")
    return {"mean": sum(lengths) / len(lengths), "at_limit": sum(n >= max_new_tokens for n in lengths) / len(lengths)}


def heldout_baseline(
    reference,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    reward: RewardFunction = sentiment,
    precision: str = "auto",
) -> dict:
    """The reference's own answers to held-out prompts, one each, drawn once and scored by `reward` (TRL's
    convention): {"texts", "rewards", "lengths"}. Every later evaluation compares a policy with these answers.

    A prompt is a string (continued as it is) or a conversation (continued through the chat template).
    """
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    samples = sample_completions(
        reference,
        tokenizer,
        texts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
    )
    return {
        "texts": samples.texts,
        "rewards": rewards_of(reward, prompts, samples.texts),
        "lengths": [len(ids) for ids in samples.completion_ids],
    }


def evaluate_against(
    policy,
    reference,
    tokenizer,
    prompts: Sequence,
    baseline: dict,
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    reward: RewardFunction = sentiment,
) -> dict:
    """`evaluate_policy` against `baseline` (from `heldout_baseline`, with the same `reward`), with the length summary
    as length_mean and length_at_limit.

    reference: the frozen reference model, or None when `policy` is the reference (KL 0).
    """
    result = evaluate_policy(
        policy,
        reference,
        tokenizer,
        [prompt_text(tokenizer, prompt) for prompt in prompts],
        baseline["rewards"],
        score=scorer(reward, prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    result.update({f"length_{key}": value for key, value in length_summary(result["lengths"], max_new_tokens).items()})
    return result


# ------------------------------------------------------------ the evaluators a run calls during training


class RewardEvaluator:
    """The policy on held-out prompts, scored by `reward_fn`, against the reference's samples drawn once at construction.

    The frozen reference is re-loaded from disk (`model_source`) for each
    evaluation and freed after it, so no second copy of the model sits in memory
    during training; a sweep that keeps one frozen copy anyway passes it as `reference=`.
    An evaluation costs one sample per prompt from the policy (whose log-probs the
    sampler keeps) and one scoring pass of the reference over those samples; at
    step 0 (`policy_is_reference=True`) it costs nothing: the reference's samples
    are the policy's.
    """

    keys = REWARD_EVAL_KEYS

    def __init__(
        self,
        model,
        tokenizer,
        prompts: Sequence,
        reward_fn: RewardFunction,
        *,
        max_new_tokens: int,
        batch_size: int,
        seed: int,
        model_source=None,
        precision: str = "auto",
        reference=None,
    ) -> None:
        self.tokenizer, self.model_source = tokenizer, model_source
        self.precision, self.reference = precision, reference
        self.prompts, self.texts = list(prompts), [prompt_text(tokenizer, prompt) for prompt in prompts]
        self.score = scorer(reward_fn, self.prompts)
        self.sizes = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.seed = seed
        baseline = heldout_baseline(
            model, tokenizer, prompts, seed=seed + 1, reward=reward_fn, precision=precision, **self.sizes
        )
        self.reference_texts, self.reference_rewards = baseline["texts"], baseline["rewards"]
        self.reference_lengths = baseline["lengths"]
        self.results: list[dict] = []  # one `measure` per call, with its step

    def __call__(self, policy, step: int, *, policy_is_reference: bool = False) -> dict:
        """Measure `policy` at training step `step`, keep the result in `results`, return its `keys` as "eval/..."."""
        result = self.measure(policy, policy_is_reference=policy_is_reference)
        self.results.append({"step": step, **result})
        return {f"eval/{key}": result[key] for key in self.keys}

    def measure(self, policy, *, policy_is_reference: bool = False) -> dict:
        """`evaluate_policy`'s result for `policy` (every prompt's sample and reward too); nothing is kept."""
        if policy_is_reference:  # the policy is the reference: its samples are the ones drawn at construction
            return self._reference_result()
        reference = self.reference or fresh_reference(self.model_source, policy)
        return evaluate_policy(
            policy,
            reference,
            self.tokenizer,
            self.texts,
            self.reference_rewards,
            score=self.score,
            seed=self.seed + 2,
            precision=self.precision,
            **self.sizes,
        )

    def _reference_result(self) -> dict:
        """`evaluate_policy`'s result for the reference itself, from its samples: no gain, a win rate of one half
        (every comparison with itself a tie) and a KL of 0, exactly; nothing is sampled again."""
        reward_mean, reward_se = mean_and_se(self.reference_rewards)
        return {
            "reward_mean": reward_mean,
            "reward_se": reward_se,
            "reward_gain": 0.0,
            "reward_gain_se": 0.0,
            "win_rate": 0.5,
            "kl": 0.0,
            "kl_se": 0.0,
            "samples": self.reference_texts,
            "rewards": self.reference_rewards,
            "lengths": self.reference_lengths,
        }

    @staticmethod
    def describe(row: dict) -> str:
        return (
            f"reward {with_se(row['eval/reward_mean'], row['eval/reward_se'], 'prompt')}, "
            f"win rate {row['eval/win_rate']:.3f}, {format_kl(row['eval/kl'], row['eval/kl_se'])}"
        )


class PairsEvaluator:
    """The policy on held-out preference pairs: how often, and by how much, its implicit reward prefers the chosen reply.

    The implicit reward of a reply is beta * (log pi(y|x) - log pi_ref(y|x)) (notebook 03); the reference's
    log-probs are computed once, at construction. Also the KL(policy || reference) on the pairs' prompts, from
    one policy sample each (`dpo_edu.evaluate.log_ratios`). At step 0 the policy is the reference: every
    reward is 0, so the accuracy (chosen reward > rejected reward, as TRL counts it) is 0 and the margin 0.
    """

    keys = PAIR_EVAL_KEYS

    def __init__(
        self,
        reference,
        tokenizer,
        pairs: list[dict],
        config: TrainConfig,
        *,
        max_new_tokens: int,
        batch_size: int,
        seed: int,
        model_source=None,
        precision: str = "auto",
    ) -> None:
        self.tokenizer, self.config, self.model_source, self.precision = tokenizer, config, model_source, precision
        self.pairs, _ = usable_examples(tokenizer, pairs, config, log=None)
        self.reference_logps = compute_pair_logps(reference, tokenizer, self.pairs, config)
        self.prompts = list(dict.fromkeys(pair["prompt"] for pair in self.pairs))
        self.sizes = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.seed = seed
        self.results: list[dict] = []

    def __call__(self, policy, step: int, *, policy_is_reference: bool = False) -> dict:
        if policy_is_reference:  # every implicit reward is 0 and so is the KL: nothing to compute
            policy_logps, kl, kl_se, texts = self.reference_logps, 0.0, 0.0, []
        else:
            policy_logps = compute_pair_logps(policy, self.tokenizer, self.pairs, self.config)
            kl, kl_se, texts = self._kl(policy)
        beta = self.config.beta
        chosen = [beta * (p - r) for p, r in zip(policy_logps[0].tolist(), self.reference_logps[0].tolist())]
        rejected = [beta * (p - r) for p, r in zip(policy_logps[1].tolist(), self.reference_logps[1].tolist())]
        margins = [c - r for c, r in zip(chosen, rejected)]
        margin, margin_se = mean_and_se(margins)
        result = {
            "accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin": margin,
            "margin_se": margin_se,
            "chosen_reward": sum(chosen) / len(chosen),
            "rejected_reward": sum(rejected) / len(rejected),
            "kl": kl,
            "kl_se": kl_se,
            "samples": texts,
        }
        self.results.append({"step": step, **result})
        return {f"eval/{key}": result[key] for key in self.keys}

    def _kl(self, policy) -> tuple[float, float, list[str]]:
        """KL(policy || reference) on the held-out prompts from one policy sample each: (kl, its SE, the samples)."""
        samples = sample_completions(
            policy, self.tokenizer, self.prompts, seed=self.seed + 2, precision=self.precision, **self.sizes
        )
        reference = fresh_reference(self.model_source, policy)
        ratios = log_ratios(
            policy, reference, self.tokenizer, samples, batch_size=self.sizes["batch_size"], precision=self.precision
        )
        return (*mean_and_se(ratios), samples.texts)

    @staticmethod
    def describe(row: dict) -> str:
        margin = with_se(row["eval/margin"], row["eval/margin_se"], "pair", "+.3f")
        return (
            f"held-out pairs: accuracy {row['eval/accuracy']:.3f}, margin {margin} "
            f"(chosen {row['eval/chosen_reward']:+.3f}, rejected {row['eval/rejected_reward']:+.3f}), "
            f"{format_kl(row['eval/kl'], row['eval/kl_se'])}"
        )


def fresh_reference(model_source, policy):
    """A fresh frozen copy of the reference, on the policy's device."""
    reference, _ = load_model(model_source, device=next(policy.parameters()).device)
    return reference.eval().requires_grad_(False)


# ------------------------------------------------------------ what training did to each side of the margin


def implicit_rewards(history: Sequence[dict], last: int = 20) -> dict:
    """What training did to each side of the margin (the metrics.jsonl rows).

    Returns the number of steps, how many had a negative mean chosen reward, and the mean
    rewards/chosen and rewards/rejected over the `last` steps. A reward beta * (log pi - log pi_ref)
    below 0 means the policy made those responses *less* likely than the reference did.
    """
    tail = history[-last:]
    return {
        "steps": len(history),
        "steps_chosen_negative": sum(row["rewards/chosen"] < 0 for row in history),
        "last_steps": len(tail),
        "chosen_last": sum(row["rewards/chosen"] for row in tail) / len(tail),
        "rejected_last": sum(row["rewards/rejected"] for row in tail) / len(tail),
    }
