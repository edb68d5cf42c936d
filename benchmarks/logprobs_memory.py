"""Extra peak memory of sequence log-probs beyond the logits: plain log_softmax+gather vs the lean version.

    python benchmarks/logprobs_memory.py                 # V=49,152, T=128, B=16 (the issue's sizes)
    python benchmarks/logprobs_memory.py --batch 4       # smaller

Each variant is measured in its own subprocess, after the logits exist, so the
numbers do not depend on what ran before. Prints MB and the ratio lean/plain
for (a) no gradients (reference and evaluation passes) and (b) forward + backward.
Goal: (a) lean <= 0.1 x plain; (b) lean < plain.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(variant: str, mode: str, batch: int, steps: int, vocab: int, device: str) -> dict:
    import torch

    from dpo_edu.logprobs import sequence_logprobs, sequence_logprobs_plain
    from dpo_edu.memory import peak_memory

    function = {"plain": sequence_logprobs_plain, "lean": sequence_logprobs}[variant]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, steps, vocab, generator=generator).to(device)
    labels = torch.randint(vocab, (batch, steps), generator=generator).to(device)
    labels[:, : steps // 4] = -100  # a prompt
    if mode == "backward":
        logits.requires_grad_(True)

    def work():
        start = time.perf_counter()
        if mode == "no_grad":
            with torch.no_grad():
                function(logits, labels)
        else:
            function(logits, labels).sum().backward()
        return time.perf_counter() - start

    seconds, extra = peak_memory(work, device)
    return {"variant": variant, "mode": mode, "extra_bytes": extra, "logits_bytes": logits.numel() * logits.element_size(), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.batch, args.steps, args.vocab, args.device)))
        return 0
    results = {}
    for mode in ("no_grad", "backward"):
        for variant in ("plain", "lean"):
            command = [sys.executable, __file__, "--one", variant, mode, "--batch", str(args.batch), "--steps", str(args.steps), "--vocab", str(args.vocab), "--device", args.device]
            results[variant, mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    logits_mb = results["plain", "no_grad"]["logits_bytes"] / 1e6
    print(f"B={args.batch} T={args.steps} V={args.vocab} on {args.device}: logits {logits_mb:.0f} MB")
    print("| pass | plain extra MB | lean extra MB | lean / plain | plain s | lean s |")
    print("|---|---|---|---|---|---|")
    for mode in ("no_grad", "backward"):
        plain, lean = results["plain", mode], results["lean", mode]
        ratio = lean["extra_bytes"] / plain["extra_bytes"]
        print(f"| {mode} | {plain['extra_bytes'] / 1e6:.0f} | {lean['extra_bytes'] / 1e6:.0f} | {ratio:.3f} | {plain['seconds']:.2f} | {lean['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
