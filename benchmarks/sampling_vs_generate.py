"""dpo-edu's sampler against plain `model.generate`, on the real model: generated tokens per second.

    python benchmarks/sampling_vs_generate.py                         # 64 course prompts x 4 samples x 32 new tokens
    python benchmarks/sampling_vs_generate.py --prompts 16 --repeats 3
    python benchmarks/sampling_vs_generate.py --rows 32 64 128 256    # the new sampler at several rows per decode step

The baseline is the course's sampler before it had its own decode loop, copied
here unchanged: left-padded batches of 64 rows (16 prompts x 4 samples),
Hugging Face `generate` with `num_return_sequences`, its dynamic KV cache (which
grows by concatenation every step) and one prefill per sample. The new one is
`dpo_edu.generation.sample_completions`. Both sample the same distribution
(temperature 1, no top-k or top-p), from the same prompts in one process, one
after the other (baseline, then new, `--repeats` times), so a busy machine
slows both alike. Generated tokens are the completions' tokens (up to and
including EOS), counted for each sampler from its own samples.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch


# --- the baseline: the course's sampler before (dpo_edu/generation.py at commit 6467a1c) ---

def _generation_config(tokenizer, max_new_tokens: int, temperature: float, per_prompt: int):
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, num_return_sequences=per_prompt,
    )


@torch.no_grad()
def generate_completions(model, tokenizer, prompts, *, per_prompt: int = 1, max_new_tokens: int = 32, batch_size: int = 64,
                         temperature: float = 1.0, seed: int = 0) -> list[list[int]]:
    """The old `sample_completions` (on CPU, where it used no autocast): completion ids, prompt order."""
    model.eval()
    config = _generation_config(tokenizer, max_new_tokens, temperature, per_prompt)
    device = next(model.parameters()).device
    prompts_per_batch = max(1, batch_size // per_prompt)
    generator_seed = torch.Generator().manual_seed(seed)
    completion_ids = []
    for start in range(0, len(prompts), prompts_per_batch):
        chunk = list(prompts[start : start + prompts_per_batch])
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        width = max(map(len, encoded))
        input_ids = torch.full((len(chunk), width), config.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
        for generated in output[:, width:].tolist():
            if tokenizer.eos_token_id in generated:
                generated = generated[: generated.index(tokenizer.eos_token_id) + 1]
            completion_ids.append(generated)
    return completion_ids


# --- the measurement ---

def timed(sample) -> tuple[float, int]:
    """(seconds, generated tokens) of one call of `sample`, which returns completion ids."""
    start = time.perf_counter()
    completion_ids = sample()
    return time.perf_counter() - start, sum(map(len, completion_ids))


def measure(model, tokenizer, prompts, *, per_prompt: int, max_new_tokens: int, rows: list[int], baseline_rows: int = 64,
            repeats: int = 1) -> list[dict]:
    """Time the baseline and the new sampler (at each of `rows` rows per decode step), `repeats` rounds, in this order.

    Returns one dict per sampler: name, rows, seconds and tokens (a list each, one per round).
    """
    from dpo_edu.generation import sample_completions

    runs = {("generate", baseline_rows): lambda: generate_completions(
        model, tokenizer, prompts, per_prompt=per_prompt, max_new_tokens=max_new_tokens, batch_size=baseline_rows)}
    for r in rows:
        runs[("dpo-edu", r)] = lambda r=r: sample_completions(  # float32 like the baseline, on a CPU with bf16 too
            model, tokenizer, prompts, per_prompt=per_prompt, max_new_tokens=max_new_tokens, batch_size=r,
            precision="fp32").completion_ids
    results = {key: {"name": key[0], "rows": key[1], "seconds": [], "tokens": []} for key in runs}
    for _ in range(repeats):
        for key, sample in runs.items():
            seconds, tokens = timed(sample)
            results[key]["seconds"].append(seconds)
            results[key]["tokens"].append(tokens)
    return list(results.values())


def tokens_per_second(result: dict) -> float:
    return sum(result["tokens"]) / sum(result["seconds"])


def machine() -> str:
    """The CPU as torch sees it: e.g. 'x86_64, 2 threads, torch CPU capability AVX2'."""
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")


def table(results: list[dict], *, title: str) -> str:
    """A markdown table: each sampler's generated tokens/s, and its ratio to the baseline (the first result)."""
    baseline = tokens_per_second(results[0])
    lines = [title, "", "| sampler | rows per decode step | generated tokens | seconds | tokens/s | ratio |", "|---|---|---|---|---|---|"]
    for result in results:
        speed = tokens_per_second(result)
        seconds = " + ".join(f"{s:.1f}" for s in result["seconds"])
        tokens = " + ".join(str(t) for t in result["tokens"])
        lines.append(f"| {result['name']} | {result['rows']} | {tokens} | {seconds} | {speed:.0f} | {speed / baseline:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import transformers

    from dpo_edu.models import load_model
    from dpo_edu.prompts import load_prompts

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="course prompts (the first K of the train split)")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, nargs="+", default=[64], help="rows per decode step of the new sampler")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (baseline then new); the table sums them")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(device="cpu")
    prompts = load_prompts("train")[: args.prompts]
    results = measure(model, tokenizer, prompts, per_prompt=args.per_prompt, max_new_tokens=args.max_new_tokens,
                      rows=args.rows, repeats=args.repeats)
    title = (f"SmolLM2-135M-Instruct, {len(prompts)} course prompts x {args.per_prompt} samples x up to {args.max_new_tokens} "
             f"new tokens, fp32, {args.repeats} round(s); {machine()}, transformers {transformers.__version__}; "
             f"{datetime.date.today().isoformat()}")
    print(table(results, title=title))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
