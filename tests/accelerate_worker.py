"""The script `tests/test_accelerate_multiprocess.py` runs, once under `accelerate launch` with 2 processes (gloo, CPU)
and once as a single process: `dpo_edu.train.train_dpo` on a tiny random Llama and 16 fixed pairs, with the
TrainConfig given on the command line as JSON.

    python tests/accelerate_worker.py --config '{"batch_size": 8, "gradient_accumulation_steps": 2}' --out DIR --processes 1
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/accelerate_worker.py --config '{"batch_size": 4}' --out DIR --processes 2

(`--multi_gpu` is accelerate's torchrun launcher; ACCELERATE_USE_CPU=true makes accelerate use gloo on the CPU.
`accelerate launch --cpu --num_processes 2` starts ONE process, not two: `--processes` makes that an error here.)

What it writes to DIR:
- every process: rank{R}.json with its metrics history, the reference log-probs it holds after the reference pass
  (and how many times the reference pass ran), and the pair indices of every forward pass it ran, in order
  ("reference" passes, then "train" passes);
- the main process only: params.safetensors (the final parameters), initial.safetensors (the parameters before
  training) and metrics.json (the history).

It records the forward passes by wrapping `dpo_edu.train.pair_logps` and `dpo_edu.train.reference_logps`, the
module globals `train_dpo` calls; the computation itself is untouched.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

# The 16 pairs: responses of different lengths, so micro-batches carry padding.
EXAMPLES = [
    {
        "prompt": f"Review {i}:",
        "chosen": f" a {'warm ' * (i % 3)}lovely film, number {i}.",
        "rejected": f" dull{' and slow' * (i % 4)}.",
    }
    for i in range(16)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TrainConfig fields as a JSON object")
    parser.add_argument("--out", required=True, type=Path, help="folder for the results")
    parser.add_argument("--processes", required=True, type=int, help="how many processes this run must have (checked)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from accelerate import PartialState

    from conftest import tiny_llama  # the tests' tiny Llama: this script's folder, tests/, is first on sys.path
    from dpo_edu import train
    from dpo_edu.models import load_tokenizer

    passes: list[dict] = []  # every forward pass of this process: which pairs
    phase = {"name": "train"}
    reference: dict[str, list[float]] = {}
    reference_calls = []
    pair_logps, reference_logps = train.pair_logps, train.reference_logps

    def recording_pair_logps(model, batch):
        passes.append({"phase": phase["name"], "index": batch["index"].tolist()})
        return pair_logps(model, batch)

    def recording_reference_logps(*a, **k):
        phase["name"] = "reference"
        reference_calls.append(1)
        try:
            chosen, rejected = reference_logps(*a, **k)
        finally:
            phase["name"] = "train"
        reference.update(chosen=chosen.tolist(), rejected=rejected.tolist())
        return chosen, rejected

    train.pair_logps, train.reference_logps = recording_pair_logps, recording_reference_logps

    tokenizer = load_tokenizer()
    model = tiny_llama(len(tokenizer))  # seeded: every process builds the same one
    initial = {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}
    config = train.TrainConfig(**json.loads(args.config))
    history = train.train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None)

    state = PartialState()  # the one train_dpo's Accelerator set up
    if state.num_processes != args.processes:  # `accelerate launch --cpu --num_processes 2` alone starts ONE process
        raise SystemExit(f"expected {args.processes} processes, got {state.num_processes} ({state.distributed_type})")
    if args.processes > 1 and torch.distributed.get_backend() != "gloo":
        raise SystemExit(f"expected the gloo backend, got {torch.distributed.get_backend()}")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"rank": state.process_index, "num_processes": state.num_processes, "history": history,
              "reference": reference, "reference_calls": len(reference_calls), "passes": passes}
    (args.out / f"rank{state.process_index}.json").write_text(json.dumps(record))
    if state.is_main_process:
        from safetensors.torch import save_file

        # named_parameters() lists a tied weight once; the model was trained in place (DDP wraps the same module)
        save_file({name: p.detach().contiguous() for name, p in model.named_parameters()}, str(args.out / "params.safetensors"))
        save_file(initial, str(args.out / "initial.safetensors"))
        (args.out / "metrics.json").write_text(json.dumps(history))
    state.wait_for_everyone()
    if args.processes > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("DPO_EDU_DEVICE", "cpu")
    main()
