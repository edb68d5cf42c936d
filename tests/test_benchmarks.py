"""The benchmarks' own set-up (not their timings): identical batches really are identical."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trl_benchmark_pairs_have_one_token_length_so_every_batch_is_the_same_work():
    from dpo_edu.data import tokenize_preference
    from dpo_edu.models import load_tokenizer

    bench = load("train_vs_trl")
    tokenizer = load_tokenizer()
    pairs = bench.make_pairs(tokenizer, 16)
    assert len({(p["chosen"], p["rejected"]) for p in pairs}) == 16
    lengths = set()
    for pair in pairs:
        feature = tokenize_preference(tokenizer, pair, max_length=bench.MAX_LENGTH, max_prompt_length=32, use_chat_template=False)
        lengths |= {len(feature["chosen"]["input_ids"]), len(feature["rejected"]["input_ids"])}
    assert lengths == {bench.tokens_per_step() // (2 * bench.PAIRS_PER_STEP)} and max(lengths) < bench.MAX_LENGTH
