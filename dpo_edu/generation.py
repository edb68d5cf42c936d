"""Sample completions from a policy, and turn scored samples into preference pairs.

The full run (notebook 06, `dpo-edu run`) builds its data the way the DPO
paper's sentiment experiment did: sample k completions per prompt from the
reference policy, score each with the ground-truth reward, and pair a better
completion with a worse one.

Sampling is plain ancestral sampling (temperature 1, no top-k, no top-p), so
the samples come from the policy's own distribution: the KL estimate in
`dpo_edu.evaluate` is only unbiased for such samples.

`sample_completions` has its own decode loop rather than calling Hugging
Face's `generate`, for speed (on a 2-core CPU, 1.6x at 64 rows per decode
step and 1.8-2x at 256-512 rows: benchmarks/sampling_vs_generate.py). Each
prompt is run through the model once however many samples it gets
(`_run_prompts`), the samples continue from a preallocated KV cache written in
place (`_kv_cache`), and each token is drawn with two small multinomials
instead of one over the whole vocabulary (`_sample_token`). `_sample_batch` is
the loop itself.

A prompt is continued as plain text (no chat template): an opening such as
"Bring tissues to Velvet Summer, because" is a text to finish, and the
(prompt, chosen, rejected) strings then work unchanged in TRL's standard
(non-conversational) format.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from typing import Sequence

import torch

from .data import tokenize_pair
from .precision import autocast
from .utils import eval_mode

PAIRING_RULES = ("best_vs_worst", "all")


@dataclasses.dataclass
class Samples:
    """Completions of `prompts`, `per_prompt` each, as token ids and text.

    completion_ids[i] holds the generated ids of sample i (prompt i // per_prompt),
    ending at the first EOS (kept) or at max_new_tokens.
    """

    prompts: list[str]
    per_prompt: int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    # log pi(completion | prompt) under the model that drew it, summed over the completion's tokens (EOS included),
    # from the very logits each token was drawn from; None where the sampler was not asked for them
    logps: list[float] | None = None


def _cut_at_eos(ids: list[int], eos_token_id: int | None) -> list[int]:
    """ids up to and including the first EOS; all of them when there is none."""
    if eos_token_id in ids:
        return ids[: ids.index(eos_token_id) + 1]
    return ids


def _cache_keyword(model) -> str:
    """The name of the forward's KV-cache argument: `cache` in recent transformers, `past_key_values` in older ones (5.6)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _run_prompts(model, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run each prompt through the model once, the prompts of one token length together, so none is padded.

    Returns (logits, keys, values): logits (n, V) float32, the next-token
    logits after each prompt; keys and values, one (n, kv_heads, W, head_dim)
    tensor per layer, W the longest prompt, each prompt right-aligned: one of
    L tokens fills slots [W - L, W), the slots left of it stay zero.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(map(len, prompt_ids))
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(prompt_ids):
        by_length.setdefault(len(ids), []).append(index)
    logits, keys, values = None, [], []
    for length, rows in by_length.items():
        cache = DynamicCache(config=model.config)
        input_ids = torch.tensor([prompt_ids[i] for i in rows], device=device)  # (r, L)
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{_cache_keyword(model): cache})
        if logits is None:  # allocated once the shapes are known
            logits = out.logits.new_empty((len(prompt_ids), out.logits.shape[-1]), dtype=torch.float32)
            for layer in cache.layers:
                keys.append(layer.keys.new_zeros((len(prompt_ids), layer.keys.shape[1], width, layer.keys.shape[3])))
                values.append(
                    layer.values.new_zeros((len(prompt_ids), layer.values.shape[1], width, layer.values.shape[3]))
                )
        index = torch.tensor(rows, device=device)
        logits[index] = out.logits[:, -1].float()
        for layer, cached in enumerate(cache.layers):
            keys[layer][index, :, width - length :] = cached.keys
            values[layer][index, :, width - length :] = cached.values
    return logits, keys, values


def _static_cache_fits(device: torch.device) -> bool:
    """Whether a static cache can hold the keys and values the model makes here: not under 16-bit autocast (`_kv_cache`)."""
    return not torch.is_autocast_enabled(device.type)


def _kv_cache(model, keys: list[torch.Tensor], values: list[torch.Tensor], per_prompt: int, max_cache_len: int):
    """The KV cache the samples continue from: each prompt's keys and values `per_prompt` times (the rows of one
    prompt adjacent), in slots [0, W) of n * per_prompt rows.

    In float32, a static cache: every layer's (rows, kv_heads, max_cache_len,
    head_dim) keys and values are allocated once and each decode step writes
    its slot in place (a dynamic cache grows by copying itself, every layer,
    every step: up to a third of a decode step on a 2-core CPU). Under 16-bit
    autocast (GPUs, CPUs with bf16), a dynamic cache: autocast makes the keys
    float32 (RoPE) and the values 16-bit, which the static cache of
    transformers 5.6 cannot hold.
    """
    from transformers import DynamicCache, StaticCache

    if _static_cache_fits(keys[0].device):
        cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    else:
        cache = DynamicCache(config=model.config)
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k.repeat_interleave(per_prompt, dim=0), v.repeat_interleave(per_prompt, dim=0), layer)
    return cache


SAMPLING_BLOCK = 256


def _sample_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / temperature), in float32: (rows, V) -> (rows,), with that softmax
    (rows, V') (V' >= V: zero-probability columns pad it to whole blocks).

    Drawn in two multinomial steps, which give each token exactly its softmax
    probability: a block of SAMPLING_BLOCK consecutive tokens with probability
    its total, then a token of that block with probability proportional to its
    own. torch.multinomial on a CPU draws one random number per category, so
    this draws V / 256 + 256 (448) per row instead of V (49,152): one multinomial
    over the whole vocabulary took a quarter of a decode step.
    """
    scores = logits.float() if temperature == 1 else logits.float() / temperature  # no (rows, V) copy at temperature 1
    probs = torch.softmax(scores, dim=-1)
    if probs.shape[-1] % SAMPLING_BLOCK:  # zero-probability tokens to fill the last block
        probs = torch.nn.functional.pad(probs, (0, -probs.shape[-1] % SAMPLING_BLOCK))
    blocks = probs.view(len(probs), -1, SAMPLING_BLOCK)  # (rows, V / 256, 256)
    block = torch.multinomial(blocks.sum(-1), 1, generator=generator)  # (rows, 1)
    within = blocks.gather(1, block[:, :, None].expand(-1, -1, SAMPLING_BLOCK)).squeeze(1)  # (rows, 256)
    return (block * SAMPLING_BLOCK + torch.multinomial(within, 1, generator=generator)).squeeze(1), probs


def _sample_batch(
    model,
    prompt_ids: list[list[int]],
    per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_prompt` samples of each prompt: (n * per_prompt, T) token ids, T <= max_new_tokens, the rows of one prompt
    adjacent, and each token's log-probability under the model, log softmax(logits) at temperature 1: (rows, T) float32.

    The decode loop: sample a token for every row, feed it back, repeat. Step
    t writes slot W + t of the KV cache (`_kv_cache`); the attention mask, cut
    to the slots filled so far, hides the slots left of each row's prompt, and
    a row's position is its prompt length plus t. Rows past their EOS keep
    going (their extra tokens are cut later); the loop stops when every row
    has sampled an EOS.
    """
    logits, keys, values = _run_prompts(model, prompt_ids)  # each prompt once, however many samples it gets
    logits = logits.repeat_interleave(per_prompt, dim=0)  # (rows, V), rows = n * per_prompt
    prompt_lengths = torch.tensor([len(ids) for ids in prompt_ids], device=logits.device)  # (n,)
    lengths = prompt_lengths.repeat_interleave(per_prompt)  # (rows,)
    width = int(lengths.max())
    cache = _kv_cache(model, keys, values, per_prompt, width + max_new_tokens)
    slots = torch.arange(width + max_new_tokens, device=logits.device)
    attention_mask = slots >= width - lengths[:, None]  # (rows, W + max_new_tokens): False left of each prompt
    keyword = _cache_keyword(model)
    finished = torch.zeros(len(lengths), dtype=torch.bool, device=logits.device)
    tokens, token_logps = [], []
    for step in range(max_new_tokens):
        token, probs = _sample_token(logits, temperature, generator)  # (rows,), (rows, V')
        tokens.append(token)
        # log pi(token), the model's own log-prob (temperature 1) that the KL estimate needs, from the logits the token
        # was drawn from: scoring the samples again under the model would cost a forward pass over all of them
        probs = probs if temperature == 1 else torch.softmax(logits.float(), dim=-1)
        token_logps.append(probs.gather(1, token[:, None]).squeeze(1).log())
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask[:, : width + step + 1],
            position_ids=(lengths + step)[:, None],
            use_cache=True,
            **{keyword: cache},
        )
        logits = out.logits[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(token_logps, dim=1)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    per_prompt: int = 1,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    precision: str = "auto",
) -> Samples:
    """Sample `per_prompt` completions of each prompt; returns `Samples` in prompt order.

    Plain ancestral sampling: each token drawn from softmax(logits / temperature)
    (float32), no top-k or top-p. The prompts are sorted by token length and
    taken in batches of `batch_size` rows (prompts x samples), so a batch's
    prompts have one or a few lengths; each prompt is run through the model
    once however many samples it gets. Each batch has its own random generator,
    seeded from `seed` and the batch's index, so the same seed gives the same
    samples on the same device and no batch depends on what another drew.
    `precision` is the autocast setting (`dpo_edu.utils.autocast`). `Samples.logps`
    holds each completion's log-prob under `model` (temperature 1), read off the
    logits it was drawn from: what `dpo_edu.evaluate.completion_logps` would
    compute for the model, without a second pass.
    """
    from tqdm.auto import tqdm

    if per_prompt < 1 or max_new_tokens < 1:
        raise ValueError(f"per_prompt and max_new_tokens must be >= 1, got {per_prompt} and {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    prompts_per_batch = max(1, batch_size // per_prompt)
    seeds = torch.Generator().manual_seed(seed)
    completion_ids: list[list[int]] = [[] for _ in range(len(prompts) * per_prompt)]
    logps: list[float] = [0.0] * len(completion_ids)
    for start in tqdm(range(0, len(prompts), prompts_per_batch), desc="sampling", disable=not progress):
        batch = by_length[start : start + prompts_per_batch]
        # one seed per batch, drawn from the run's seed: a batch does not depend on how many draws earlier ones made
        generator = torch.Generator(device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=seeds)))
        with eval_mode(model), autocast(device, precision):  # eval mode: no dropout; the caller's mode after
            tokens, token_logps = _sample_batch(
                model, [prompt_ids[i] for i in batch], per_prompt, max_new_tokens, temperature, eos, generator
            )
        rows = iter(zip(tokens.tolist(), token_logps.tolist()))  # per_prompt rows for each prompt of the batch, in turn
        for i in batch:
            for sample in range(per_prompt):
                ids, row_logps = next(rows)
                completion_ids[i * per_prompt + sample] = kept = _cut_at_eos(ids, eos)
                logps[i * per_prompt + sample] = math.fsum(row_logps[: len(kept)])
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    samples_prompt_ids = [ids for ids in prompt_ids for _ in range(per_prompt)]
    return Samples(list(prompts), per_prompt, samples_prompt_ids, completion_ids, texts, logps)


def tokenizes_cleanly(tokenizer, prompt: str, completion: str) -> bool:
    """Whether (prompt, completion) survives `dpo_edu.data.tokenize_pair`'s seam check.

    Decoded text does not always re-tokenise into the ids that were sampled;
    when the prompt's ids would change at the seam the pair cannot be trained on.
    """
    try:
        tokenize_pair(tokenizer, prompt, completion, use_chat_template=False)
    except ValueError:
        return False
    return True


def make_pairs(
    samples: Samples,
    scores: Sequence[float],
    *,
    rule: str = "best_vs_worst",
    min_gap: float = 0.1,
    tokenizer=None,
) -> tuple[list[dict], dict[str, int]]:
    """Pair a higher-scored completion with a lower-scored one of the same prompt.

    rule="best_vs_worst": one pair per prompt, its highest against its lowest
    score (the clearest preference each prompt offers); rule="all": every two
    completions of a prompt. Pairs whose score gap is below `min_gap` are dropped
    (VADER gives many texts exactly 0.0: a tie says nothing about which is
    better), as are empty completions and, given the tokenizer, completions that
    do not re-tokenise cleanly after the prompt.

    Returns (pairs, counts): pairs are {"prompt", "chosen", "rejected",
    "chosen_score", "rejected_score"} (TRL's field names plus the scores ODPO
    needs); counts says how many candidate pairs each rule kept or dropped.
    """
    if rule not in PAIRING_RULES:
        raise ValueError(f"unknown pairing rule {rule!r}; allowed: {', '.join(PAIRING_RULES)}")
    if len(scores) != len(samples.texts):
        raise ValueError(f"{len(scores)} scores for {len(samples.texts)} samples")
    counts = {"prompts": len(samples.prompts), "pairs": 0, "small_gap": 0, "unusable_text": 0}
    pairs = []
    k = samples.per_prompt
    for p, prompt in enumerate(samples.prompts):
        usable = [
            i
            for i in range(p * k, (p + 1) * k)
            if samples.texts[i].strip()
            and (tokenizer is None or tokenizes_cleanly(tokenizer, prompt, samples.texts[i]))
        ]
        counts["unusable_text"] += k - len(usable)
        ranked = sorted(usable, key=lambda i: scores[i], reverse=True)
        if rule == "best_vs_worst":
            candidates = [(ranked[0], ranked[-1])] if len(ranked) >= 2 else []
        else:
            candidates = list(itertools.combinations(ranked, 2))
        for high, low in candidates:
            if scores[high] - scores[low] < min_gap:
                counts["small_gap"] += 1
                continue
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": samples.texts[high],
                    "rejected": samples.texts[low],
                    "chosen_score": float(scores[high]),
                    "rejected_score": float(scores[low]),
                }
            )
    counts["pairs"] = len(pairs)
    return pairs, counts
