"""The benchmarks' own set-up (not their timings): identical batches really are identical."""
import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trl_benchmark_pairs_have_one_token_length_so_every_batch_is_the_same_work(tokenizer):
    from dpo_edu.data import tokenize_preference

    bench = load("train_vs_trl")
    pairs = bench.make_pairs(tokenizer, 16)
    assert len({(p["chosen"], p["rejected"]) for p in pairs}) == 16
    lengths = set()
    for pair in pairs:
        feature = tokenize_preference(tokenizer, pair, max_length=bench.MAX_LENGTH, max_prompt_length=32, use_chat_template=False)
        lengths |= {len(feature["chosen"]["input_ids"]), len(feature["rejected"]["input_ids"])}
    assert lengths == {bench.tokens_per_step() // (2 * bench.PAIRS_PER_STEP)} and max(lengths) < bench.MAX_LENGTH


def test_sampling_benchmark_runs_both_samplers_on_the_same_prompts_and_prints_a_table(tokenizer, tiny_model):
    bench = load("sampling_vs_generate")
    model = tiny_model().eval()
    prompts = ["Bring tissues to Velvet Summer, because", "Let me be honest:", "I wanted to like it, but"]
    baseline = bench.generate_completions(model, tokenizer, prompts, per_prompt=2, max_new_tokens=5, batch_size=4)
    assert len(baseline) == 6 and all(1 <= len(ids) <= 5 for ids in baseline)
    results = bench.measure(model, tokenizer, prompts, per_prompt=2, max_new_tokens=5, rows=[4, 6], baseline_rows=4, repeats=2)
    assert [(r["name"], r["rows"]) for r in results] == [("generate", 4), ("dpo-edu", 4), ("dpo-edu", 6)]
    assert all(len(r["seconds"]) == 2 and all(6 <= t <= 30 for t in r["tokens"]) for r in results)
    lines = bench.table(results, title="title").splitlines()
    assert lines[0] == "title" and lines[2].startswith("| sampler |") and len(lines) == 7
    assert lines[4].startswith("| generate | 4 |") and lines[4].endswith("| 1.00x |")


def test_sampling_benchmark_end_to_end_at_a_tiny_size(capsys):
    bench = load("sampling_vs_generate")
    bench.main(["--prompts", "2", "--per-prompt", "2", "--max-new-tokens", "2", "--rows", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SmolLM2-135M-Instruct, 2 course prompts x 2 samples x up to 2 new tokens") and "threads" in lines[0]
    assert [line.split(" | ")[:2] for line in lines[4:]] == [["| generate", "64"], ["| dpo-edu", "4"]]


def test_lora_benchmark_end_to_end_at_a_tiny_size(capsys):
    bench = load("lora_memory")
    results = bench.main(["--tiny"])
    assert results["lora"]["trainable"] == 16 * 512 * 2  # r * (in + out) over the tiny Llama's 7 projections x 2 layers
    assert results["full"]["trainable"] == results["full"]["total"]
    assert results["lora"]["optimizer_state_bytes"] == 8 * results["lora"]["trainable"] + 4 * 2 * 7 * 2  # 2 fp32 moments + a step per tensor
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4].startswith("| variant | trainable params |")
    assert [line.split(" | ")[0] for line in lines[-2:]] == ["| full fine-tuning", "| LoRA r=16"] and lines[-2].endswith("| 1.00x | 1.00x |")
