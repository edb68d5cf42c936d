"""Sample completions from a policy, and turn scored samples into preference pairs.

The full run (notebook 06, `dpo-edu run`) builds its data the way the DPO
paper's sentiment experiment did: sample k completions per prompt from the
reference policy, score each with the ground-truth reward, and pair a better
completion with a worse one.

Sampling is plain ancestral sampling (temperature 1, no top-k, no top-p), so
the samples come from the policy's own distribution: the KL estimate in
`dpo_edu.evaluate` is only unbiased for such samples.

A prompt is continued as plain text (no chat template): an opening such as
"Bring tissues to Velvet Summer, because" is a text to finish, and the
(prompt, chosen, rejected) strings then work unchanged in TRL's standard
(non-conversational) format.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Sequence

import torch

from .data import tokenize_pair
from .utils import autocast_dtype

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

    def prompt_of(self, index: int) -> str:
        return self.prompts[index // self.per_prompt]


def _generation_config(tokenizer, max_new_tokens: int, temperature: float, per_prompt: int):
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, num_return_sequences=per_prompt,
    )


def _mixed_precision(device: torch.device):
    """bf16 or fp16 autocast on a GPU (as `autocast_dtype` picks), nothing on CPU."""
    dtype = autocast_dtype(device) if device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
) -> Samples:
    """Sample `per_prompt` completions of each prompt; returns `Samples` in prompt order.

    Prompts are left-padded into batches of `batch_size` rows (prompts x samples);
    the same seed gives the same samples on the same device.
    """
    from tqdm.auto import tqdm

    if per_prompt < 1 or max_new_tokens < 1:
        raise ValueError(f"per_prompt and max_new_tokens must be >= 1, got {per_prompt} and {max_new_tokens}")
    was_training = model.training
    model.eval()
    config = _generation_config(tokenizer, max_new_tokens, temperature, per_prompt)
    device = next(model.parameters()).device
    prompts_per_batch = max(1, batch_size // per_prompt)
    generator_seed = torch.Generator().manual_seed(seed)
    prompt_ids, completion_ids = [], []
    batches = range(0, len(prompts), prompts_per_batch)
    for start in tqdm(batches, desc="sampling", disable=not progress):
        chunk = list(prompts[start : start + prompts_per_batch])
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(map(len, encoded))
        input_ids = torch.full((len(chunk), width), config.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        # one seed per batch, drawn from the run's seed: batches do not depend on earlier batches' lengths
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        with _mixed_precision(device):
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                generation_config=config,
            )
        for row, generated in enumerate(output[:, width:].tolist()):
            if tokenizer.eos_token_id in generated:
                generated = generated[: generated.index(tokenizer.eos_token_id) + 1]
            prompt_ids.append(encoded[row // per_prompt])
            completion_ids.append(generated)
    model.train(was_training)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Samples(list(prompts), per_prompt, prompt_ids, completion_ids, texts)


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
            i for i in range(p * k, (p + 1) * k)
            if samples.texts[i].strip() and (tokenizer is None or tokenizes_cleanly(tokenizer, prompt, samples.texts[i]))
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
            pairs.append({
                "prompt": prompt, "chosen": samples.texts[high], "rejected": samples.texts[low],
                "chosen_score": float(scores[high]), "rejected_score": float(scores[low]),
            })
    counts["pairs"] = len(pairs)
    return pairs, counts


def write_jsonl(rows: Sequence[dict], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, "\\n"), atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    with staging.open("w", encoding="utf-8", newline="\n") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    staging.replace(path)
    return path
