"""Extra peak memory of sequence log-probs beyond the logits: plain log_softmax+gather vs the lean version.

    python benchmarks/logprobs_memory.py                 # V=49,152, T=128, B=16 (the issue's sizes)
    python benchmarks/logprobs_memory.py --batch 2 --steps 32

Each number comes from a fresh subprocess (dpo_edu.memory.compare_logprobs_memory),
so it does not depend on what ran before. Prints MB, the ratio lean/plain and
seconds, for (a) no gradients (reference and evaluation passes) and (b) forward
+ backward. Goals: (a) lean <= 0.1 x plain; (b) lean < plain.
"""
from __future__ import annotations

import argparse
import sys

from dpo_edu.memory import compare_logprobs_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-rows", type=int, default=None, help="lean version's rows per chunk (default: B*T/16, at most 256)")
    args = parser.parse_args()
    results = compare_logprobs_memory(args.batch, args.steps, args.vocab, args.device, args.chunk_rows)
    print(f"B={args.batch} T={args.steps} V={args.vocab} on {args.device}: logits {results['plain', 'no_grad']['logits_bytes'] / 1e6:.0f} MB")
    print("| pass | plain extra MB | lean extra MB | lean / plain | plain s | lean s |")
    print("|---|---|---|---|---|---|")
    for mode in ("no_grad", "backward"):
        plain, lean = results["plain", mode], results["lean", mode]
        ratio = lean["extra_bytes"] / plain["extra_bytes"]
        print(f"| {mode} | {plain['extra_bytes'] / 1e6:.0f} | {lean['extra_bytes'] / 1e6:.0f} | {ratio:.3f} | {plain['seconds']:.2f} | {lean['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
