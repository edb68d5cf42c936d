"""dpo-edu's DPO trainer against TRL's DPOTrainer, on identical batches of the real model: s/step, tokens/s, peak RSS.

    python benchmarks/train_vs_trl.py                      # fp32: TRL (reference each step), TRL precompute, dpo-edu
    python benchmarks/train_vs_trl.py --precision both     # and the same in bf16 autocast (fp32 master weights)
    make bench                                             # installs TRL (the `bench` extra) first

Every pair has the same token lengths (a prompt of 24 one-token words, responses
of 30, plus EOS: 55 tokens, no truncation at max_length 64, no padding), so
every batch of 8 pairs is the same work for both trainers whatever the shuffle.
Both run SmolLM2-135M-Instruct with AdamW, no warm-up, no gradient
checkpointing (TRL 1.x turns it on by default; it trades time for memory) and
the same thread count; `dpo-edu-checkpointing` is dpo-edu with
`TrainConfig(gradient_checkpointing=True)`, the memory-saving point. Each
variant runs in a fresh process, so its peak RSS is its own (model loading
included). Times are the mean of `--steps` optimizer steps after `--warmup`.
The ratios are against TRL with precomputed reference log-probs (its fastest
mode) in the same precision, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PAIRS_PER_STEP = 8
PROMPT_WORDS, RESPONSE_WORDS, MAX_LENGTH = 24, 30, 64
WORDS = ("the film was good bad great dull warm cold long short funny sad dark light story actor scene music plot end "
         "time life love night day world man woman old new best worst real true fine slow fast").split()


def one_token_words(tokenizer) -> list[str]:
    """Words that are exactly one token each with a leading space, so word counts are token counts."""
    return [word for word in WORDS if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1]


def make_pairs(tokenizer, n: int, seed: int = 0) -> list[dict]:
    """n (prompt, chosen, rejected) pairs of fixed token lengths: PROMPT_WORDS and RESPONSE_WORDS tokens."""
    import random

    rng, words = random.Random(seed), one_token_words(tokenizer)
    def text(k: int) -> str:
        return "".join(" " + rng.choice(words) for _ in range(k))

    pairs = [{"prompt": "Review:" + text(PROMPT_WORDS), "chosen": text(RESPONSE_WORDS), "rejected": text(RESPONSE_WORDS)} for _ in range(n)]
    for pair in pairs:  # the fixed lengths are what make the batches identical: check them
        for key in ("chosen", "rejected"):
            ids = tokenizer(pair["prompt"] + pair[key], add_special_tokens=False)["input_ids"]
            assert len(ids) == 2 + PROMPT_WORDS + RESPONSE_WORDS, len(ids)  # "Review" ":" + words
    return pairs


def tokens_per_step() -> int:
    return PAIRS_PER_STEP * 2 * (2 + PROMPT_WORDS + RESPONSE_WORDS + 1)  # chosen and rejected rows, with EOS


def run_dpo_edu(pairs, steps: int, precision: str, gradient_checkpointing: bool = False) -> tuple[list[float], list[float]]:
    from dpo_edu.models import load_model
    from dpo_edu.train import TrainConfig, train_dpo

    model, tokenizer = load_model(device="cpu")
    config = TrainConfig(beta=0.1, learning_rate=5e-5, batch_size=PAIRS_PER_STEP, epochs=1, max_steps=steps, warmup_steps=0,
                         max_length=MAX_LENGTH, max_prompt_length=32, use_chat_template=False,
                         mixed_precision="bf16" if precision == "bf16" else "fp32", gradient_checkpointing=gradient_checkpointing)
    stamps = [time.perf_counter()]
    history = train_dpo(model, tokenizer, pairs, config, progress=False, log=None, on_step=lambda record: stamps.append(time.perf_counter()))
    times = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # from the end of step 1 on: the reference pass is not a step
    return times, [record["loss"] for record in history]


def run_trl(pairs, steps: int, precision: str, precompute: bool) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dpo_edu.models import load_model

    model, tokenizer = load_model(device="cpu")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = DPOConfig(
        output_dir=os.environ.get("TMPDIR", "/tmp") + "/dpo-edu-bench-trl", per_device_train_batch_size=PAIRS_PER_STEP,
        max_steps=steps, learning_rate=5e-5, warmup_steps=0, lr_scheduler_type="linear", beta=0.1, max_length=MAX_LENGTH,
        precompute_ref_log_probs=precompute, gradient_checkpointing=False, bf16=precision == "bf16", fp16=False, use_cpu=True,
        report_to=[], logging_steps=1, save_strategy="no", dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def worker(name: str, steps: int) -> dict:
    import torch

    trainer, precision = name.rsplit("-", 1)
    from dpo_edu.models import load_tokenizer

    torch.manual_seed(0)
    pairs = make_pairs(load_tokenizer(), PAIRS_PER_STEP * steps)
    losses: list[float] = []
    if trainer.startswith("dpo-edu"):
        times, losses = run_dpo_edu(pairs, steps, precision, gradient_checkpointing=trainer == "dpo-edu-checkpointing")
    else:
        times = run_trl(pairs, steps, precision, precompute=trainer == "trl-precompute")
    return {"name": name, "step_seconds": times, "losses": losses, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps run before timing")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32")
    parser.add_argument("--only", nargs="*", help="run only these variants (e.g. dpo-edu-fp32)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps + args.warmup + 1)))
        return
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    from dpo_edu.precision import cpu_bf16_supported

    if "bf16" in precisions and not cpu_bf16_supported():
        import torch

        print(f"this CPU has no bf16 in hardware (torch sees {torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX): "
              f"bf16 autocast would be emulated, so the bf16 variants are skipped")
        precisions = tuple(p for p in precisions if p != "bf16") or sys.exit(1)
    names = [f"{t}-{p}" for p in precisions for t in ("trl-reference", "trl-precompute", "dpo-edu", "dpo-edu-checkpointing") if not (t == "trl-reference" and p == "bf16")]
    names = [name for name in names if not args.only or name in args.only]
    results = {}
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup)],
                              capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        result = json.loads(line[len("RESULT "):])
        timed = result["step_seconds"][args.warmup:args.warmup + args.steps]
        result["s_per_step"] = sum(timed) / len(timed)
        result["tokens_per_s"] = tokens_per_step() / result["s_per_step"]
        results[name] = result
        print(f"{name}: {result['s_per_step']:.2f} s/step over {len(timed)} steps, peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    print(f"\nSmolLM2-135M-Instruct, {PAIRS_PER_STEP} pairs x {2 + PROMPT_WORDS + RESPONSE_WORDS + 1} tokens per step, "
          f"{results[names[0]]['threads']} threads; ratios against TRL precompute in the same precision\n")
    print("| trainer | precision | tokens/s | s/step | peak RSS MB | tokens/s ratio | RSS ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        baseline = results.get(f"trl-precompute-{name.rsplit('-', 1)[1]}")
        speed = f"{result['tokens_per_s'] / baseline['tokens_per_s']:.2f}x" if baseline else "-"
        memory = f"{result['peak_rss_mb'] / baseline['peak_rss_mb']:.2f}x" if baseline else "-"
        trainer, precision = name.rsplit("-", 1)
        print(f"| {trainer} | {precision} | {result['tokens_per_s']:.0f} | {result['s_per_step']:.2f} | {result['peak_rss_mb']:,.0f} | {speed} | {memory} |")


if __name__ == "__main__":
    main()
