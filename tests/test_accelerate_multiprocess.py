"""Scale-out: `accelerate launch` with 2 processes (gloo, CPU) runs the course's trainer, and 2 processes x batch b
end where 1 process with batch 2b in 2 micro-batches of b (gradient accumulation 2) ends.

Both runs are `tests/accelerate_worker.py` (a tiny random Llama, 16 fixed pairs, N = 3 optimizer steps across an
epoch boundary), started as subprocesses at the same time. Why they should agree, step by step:
- data: accelerate shards the training loader's batches round-robin (process p gets batches p, p + 2, ...), and
  every process draws the same shuffle (same seeded generator; accelerate also copies process 0's generator state
  to the others at each epoch's start). So step k's pairs on 2 processes are step k's two micro-batches on 1.
- gradients: `accelerator.backward` divides the loss by gradient_accumulation_steps (1 process: g0/2 + g1/2); DDP
  averages over processes ((g0 + g1) / 2). Halving is exact in floating point, so the two agree to the bit, and so
  do clipping and AdamW after them.
- reference: the reference loader is sharded the same way and `gather_for_metrics` hands every process all 16
  pairs' log-probs, put in place by pair index.
Tolerances: parameters max |diff| <= 1e-5 (observed: 0); metrics rel/abs 1e-6 (a mean over 8 gathered pairs vs
the mean of two means of 4 differs in the last float32 bits).
"""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("accelerate_worker.py")
B = 4  # pairs per process per step (2 processes) = pairs per micro-batch (1 process)
STEPS = 3
COMMON = dict(learning_rate=5e-3, warmup_steps=0, epochs=2, max_steps=STEPS, max_length=48, max_prompt_length=16,
              mixed_precision="fp32", seed=3)  # 16 pairs / (2 * 4) = 2 steps per epoch: step 3 is in the second epoch
PARAM_TOL = 1e-5
METRIC_TOL = 1e-6
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected", "grad_norm", "lr")
TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed has no gloo backend in this torch build: no multi-process CPU training to test",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out: Path, config: dict, processes: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "DPO_EDU_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)  # the trainer itself must make the processes talk (train.make_accelerator: cpu=True)
    script = [str(WORKER), "--config", json.dumps(config), "--out", str(out), "--processes", str(processes)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        # accelerate 1.15: `--cpu` takes the single-process launcher whatever --num_processes says; `--multi_gpu` is its
        # torchrun launcher. On a machine with no GPU its processes used to run alone (DistributedType.NO, each training
        # on its own shard, silently); the trainer's Accelerator(cpu=True) makes them MULTI_CPU over gloo.
        # CUDA_VISIBLE_DEVICES="" hides any GPU.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *script]
    return subprocess.Popen(command, env=env, cwd=WORKER.parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, what: str) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{what} took over {TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, f"{what} failed (exit {process.returncode}):\n{output[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"one": ..., "two": ...}: each run's rank files, final and initial parameters."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("accelerate")
    two = start(folder / "two", {**COMMON, "batch_size": B, "gradient_accumulation_steps": 1}, processes=2)
    one = start(folder / "one", {**COMMON, "batch_size": 2 * B, "gradient_accumulation_steps": 2}, processes=1)
    finish(one, "1 process, gradient accumulation 2")
    finish(two, "accelerate launch, 2 processes")
    results = {}
    for name, ranks in (("one", 1), ("two", 2)):
        results[name] = {
            "ranks": [json.loads((folder / name / f"rank{rank}.json").read_text()) for rank in range(ranks)],
            "params": load_file(str(folder / name / "params.safetensors")),
            "initial": load_file(str(folder / name / "initial.safetensors")),
        }
    return results


def test_two_processes_ran_the_trainer(runs):
    assert [rank["num_processes"] for rank in runs["two"]["ranks"]] == [2, 2]  # the worker also checked gloo
    assert [rank["rank"] for rank in runs["two"]["ranks"]] == [0, 1]


def test_parameters_agree_after_n_steps_and_really_moved(runs):
    one, two = runs["one"], runs["two"]
    assert one["params"].keys() == two["params"].keys()
    for name in one["params"]:
        assert torch.equal(one["initial"][name], two["initial"][name]), name  # the same start
        diff = (one["params"][name] - two["params"][name]).abs().max().item()
        moved = (one["params"][name] - one["initial"][name]).abs().max().item()
        assert diff <= PARAM_TOL, f"{name}: 1 process vs 2 differ by {diff:.3g}"
        assert moved >= 100 * PARAM_TOL, f"{name} moved only {moved:.3g}: the comparison would say nothing"


def test_each_step_sees_the_same_pairs(runs):
    one = [p["index"] for p in runs["one"]["ranks"][0]["passes"] if p["phase"] == "train"]
    ranks = [[p["index"] for p in rank["passes"] if p["phase"] == "train"] for rank in runs["two"]["ranks"]]
    assert len(one) == 2 * STEPS and [len(r) for r in ranks] == [STEPS, STEPS]
    for step in range(STEPS):  # 1 process: micro-batches 2k, 2k+1; 2 processes: batch k on rank 0 and on rank 1
        assert [ranks[0][step], ranks[1][step]] == one[2 * step: 2 * step + 2], f"step {step + 1}"
    assert sorted(sum(one[:4], [])) == list(range(16))  # the first epoch (steps 1-2) covers every pair once
    assert one[4:6] != one[0:2]  # step 3 (second epoch) draws a new order


def test_reference_logps_computed_once_sharded_and_gathered(runs):
    one = runs["one"]["ranks"][0]
    one_batches = [p["index"] for p in one["passes"] if p["phase"] == "reference"]
    assert one["reference_calls"] == 1 and len(one_batches) == 16 // B
    assert len(one["reference"]["chosen"]) == len(one["reference"]["rejected"]) == 16
    for rank in runs["two"]["ranks"]:
        batches = [p["index"] for p in rank["passes"] if p["phase"] == "reference"]
        assert rank["reference_calls"] == 1
        assert batches == one_batches[rank["rank"]::2]  # its shard only: half the pairs, in the 1-process batches
        for side in ("chosen", "rejected"):  # all 16 pairs on every process, each in its own place
            assert rank["reference"][side] == pytest.approx(one["reference"][side], abs=1e-6), (rank["rank"], side)
    shards = [sum((p["index"] for p in rank["passes"] if p["phase"] == "reference"), []) for rank in runs["two"]["ranks"]]
    assert sorted(shards[0] + shards[1]) == list(range(16))


def test_metrics_are_gathered_and_agree_step_by_step(runs):
    one = runs["one"]["ranks"][0]["history"]
    rank0, rank1 = (rank["history"] for rank in runs["two"]["ranks"])
    assert [r["step"] for r in one] == [r["step"] for r in rank0] == [r["step"] for r in rank1] == list(range(1, STEPS + 1))
    for history in (one, rank0):
        assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
        assert history[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)
        assert history[-1]["loss"] < history[0]["loss"] - 0.05
    for a, b, c in zip(one, rank0, rank1):
        assert a["epoch"] == b["epoch"] == c["epoch"]
        for name in COMPARED:
            assert b[name] == c[name], f"step {a['step']} {name}: the two processes log different values (not gathered?)"
            assert b[name] == pytest.approx(a[name], rel=METRIC_TOL, abs=METRIC_TOL), f"step {a['step']} {name}"
