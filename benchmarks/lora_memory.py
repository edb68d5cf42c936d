"""LoRA against full fine-tuning with dpo-edu's train_dpo on the real model: peak RSS, s/step, optimizer state.

    python benchmarks/lora_memory.py              # 5 timed steps after 2 warm-up steps, LoRA r=16
    python benchmarks/lora_memory.py --quick      # 2 timed steps after 1 warm-up step
    python benchmarks/lora_memory.py --tiny       # a tiny random Llama: the script end to end in seconds (for tests)

Both variants train SmolLM2-135M-Instruct in fp32 on the same batches as
benchmarks/train_vs_trl.py (8 pairs of 57-token rows, no padding, no
truncation: every step is the same work), with AdamW, no warm-up, no gradient
checkpointing, the same learning rate (time and memory do not depend on it)
and the same thread count. LoRA (`dpo_edu.lora.add_lora`, alpha = 2 r, on all
seven projections of every block) computes its reference with the adapters
disabled, so neither variant keeps a second copy of the model. Each variant
runs in a fresh process, so its peak RSS (`resource.getrusage`) is its own,
model loading included. Optimizer state is what AdamW holds after the last
step (its moments, for trainable parameters only), measured, not computed;
"weights + grads + AdamW" adds 4 bytes per parameter and 4 per trainable one
to it. Times are the mean of `--steps` optimizer steps after `--warmup`;
ratios are against full fine-tuning measured in the same run.

The workers run with MALLOC_MMAP_THRESHOLD_=131072 (glibc; `--mmap-threshold 0`
leaves glibc's default, as benchmarks/train_vs_trl.py does). By default glibc
raises that threshold as large blocks are freed, after which the activations
of each step come from the heap and stay in the process when freed, so peak
RSS measures the allocator's leftovers more than the tensors: in one 2-step
probe on the 2-core course machine (2026-12-01), LoRA's peak RSS was 3,620 MB
with the default and 2,249 MB with the fixed threshold, full fine-tuning's
3,841 and 3,320 MB; between steps LoRA's RSS fell back to 1,000 MB only with
the fixed threshold. The fixed threshold costs time (each large tensor is a
fresh mapping the kernel zeroes: 133 s of system time in the whole run with it,
38 s with the default, on that machine), so compare s/step only within one
setting. Other allocators (macOS) ignore the variable.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_trl import MAX_LENGTH, PAIRS_PER_STEP, PROMPT_WORDS, RESPONSE_WORDS, make_pairs, tokens_per_step  # noqa: E402

VARIANTS = ("full", "lora")


def tiny_model(tokenizer):
    """A randomly initialised 2-layer Llama with the course tokenizer's vocabulary (for --tiny)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def worker(variant: str, steps: int, rank: int, tiny: bool) -> dict:
    """Train `steps` optimizer steps of one variant in this process; return its measurements."""
    import torch

    from dpo_edu.lora import add_lora, trainable_parameters
    from dpo_edu.models import load_model, load_tokenizer
    from dpo_edu.train import TrainConfig, train_dpo

    if tiny:
        tokenizer = load_tokenizer()
        model = tiny_model(tokenizer)
    else:
        model, tokenizer = load_model(device="cpu")
    if variant == "lora":
        model = add_lora(model, r=rank, alpha=2 * rank)
    trainable, total = trainable_parameters(model)

    optimizers = []  # the AdamW train_dpo creates, to read its state afterwards

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    torch.optim.AdamW = RecordedAdamW
    torch.manual_seed(0)
    pairs = make_pairs(tokenizer, PAIRS_PER_STEP * steps)
    config = TrainConfig(beta=0.1, learning_rate=5e-5, batch_size=PAIRS_PER_STEP, epochs=1, max_steps=steps, warmup_steps=0,
                         max_length=MAX_LENGTH, max_prompt_length=32, use_chat_template=False, mixed_precision="fp32")
    stamps = [time.perf_counter()]
    history = train_dpo(model, tokenizer, pairs, config, progress=False, log=None, on_step=lambda record: stamps.append(time.perf_counter()))
    (optimizer,) = optimizers
    state_bytes = sum(value.nbytes for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value))
    return {
        "variant": variant, "step_seconds": [b - a for a, b in zip(stamps[1:], stamps[2:])],  # from step 1's end: no reference pass
        "losses": [record["loss"] for record in history], "trainable": trainable, "total": total,
        "optimizer_state_bytes": state_bytes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
    }


def run_variant(variant: str, steps: int, warmup: int, rank: int, tiny: bool, mmap_threshold: int) -> dict:
    """One variant in a fresh Python process (its own peak RSS); its result with s/step over the timed steps."""
    command = [sys.executable, __file__, "--worker", variant, "--steps", str(steps), "--warmup", str(warmup), "--rank", str(rank)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else None
    done = subprocess.run(command + (["--tiny"] if tiny else []), capture_output=True, text=True, env=env)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    timed = result["step_seconds"][warmup:warmup + steps]
    result["s_per_step"] = sum(timed) / len(timed)
    result["timed_steps"] = len(timed)
    return result


def table(results: dict[str, dict], rank: int, tiny: bool, mmap_threshold: int = 0) -> str:
    """The results as a markdown table, with ratios against full fine-tuning, under a one-line title."""
    base = results["full"]
    model = "a tiny random Llama (--tiny)" if tiny else "SmolLM2-135M-Instruct"
    lines = [
        f"{model}, fp32, {PAIRS_PER_STEP} pairs x {2 + PROMPT_WORDS + RESPONSE_WORDS + 1} tokens per step, "
        f"{base['threads']} threads, s/step over {base['timed_steps']} steps, "
        + (f"MALLOC_MMAP_THRESHOLD_={mmap_threshold}" if mmap_threshold else "glibc's default malloc")
        + "; ratios against full fine-tuning in the same run",
        "",
        "| variant | trainable params | optimizer state MB | weights + grads + AdamW MB | s/step | tokens/s | peak RSS MB | s/step ratio | peak RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, result in results.items():
        name = "full fine-tuning" if variant == "full" else f"LoRA r={rank}"
        state_bytes = 4 * result["total"] + 4 * result["trainable"] + result["optimizer_state_bytes"]
        lines.append(
            f"| {name} | {result['trainable']:,} of {result['total']:,} | {result['optimizer_state_bytes'] / 2**20:,.1f} | "
            f"{state_bytes / 2**20:,.0f} | {result['s_per_step']:.2f} | {tokens_per_step() / result['s_per_step']:.0f} | "
            f"{result['peak_rss_mb']:,.0f} | {result['s_per_step'] / base['s_per_step']:.2f}x | "
            f"{result['peak_rss_mb'] / base['peak_rss_mb']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before timing")
    parser.add_argument("--quick", action="store_true", help="--steps 2 --warmup 1")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r (alpha = 2 r)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the real model, 1 timed step: checks the script")
    parser.add_argument("--mmap-threshold", type=int, default=131072,
                        help="MALLOC_MMAP_THRESHOLD_ for the workers, in bytes; 0: glibc's default (see the module docstring)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
    if args.tiny and not args.worker:
        args.steps, args.warmup = 1, 0
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps + args.warmup + 1, args.rank, args.tiny)))
        return {}
    results = {}
    for variant in VARIANTS:
        results[variant] = result = run_variant(variant, args.steps, args.warmup, args.rank, args.tiny, args.mmap_threshold)
        print(f"{variant}: {result['s_per_step']:.2f} s/step over {result['timed_steps']} steps, peak RSS {result['peak_rss_mb']:,.0f} MB",
              flush=True)
    print()
    print(table(results, args.rank, args.tiny, args.mmap_threshold))
    return results


if __name__ == "__main__":
    main()
