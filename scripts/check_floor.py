"""Check that the oldest transformers dpo-edu allows reads what the installed one writes, and runs the course.

    python scripts/check_floor.py FLOOR_DIR VERSION

FLOOR_DIR holds transformers==VERSION and the tokenizers and huggingface_hub it
needs (`make test-floor` installs them there with `pip install --target`; torch
and the rest come from this venv). With this venv's transformers the script
saves a tiny random Llama with the real SmolLM2 tokenizer, as a run saves its
policy. A second Python, with FLOOR_DIR first on its path, loads that folder and
the course cache through dpo_edu.models, checks the logits and the tokens are
the same, builds the tokenizer from the embedded GGUF as a first run would
(transformers 5.0-5.5 build a different one: 49,157 tokens and a BOS), samples,
takes one DPO step (with activation checkpointing) and saves the model again;
this Python then loads what the floor saved. Everything compared is float32
(no autocast, whatever the CPU has): the check is of versions, not precisions.
Prints one line; exits 1 on any failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

TEXT = "The movie was wonderful."
PROMPT = "Write one sentence about a film you liked."
EXAMPLES = [
    {"prompt": "Review:", "chosen": "A wonderful film, I loved it.", "rejected": "Awful and dull."},
    {"prompt": "Your verdict?", "chosen": "Moving and beautiful.", "rejected": "A boring mess."},
]


def tiny_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tokens(tokenizer) -> dict:
    """What two versions' tokenizers must agree on."""
    from dpo_edu.data import format_prompt

    ids = tokenizer(TEXT)["input_ids"]
    return {"size": len(tokenizer), "ids": ids, "text": tokenizer.decode(ids), "prompt": format_prompt(tokenizer, PROMPT)}


def fingerprint(model, tokenizer) -> dict:
    """What two versions must agree on for a model and its tokenizer: the tokens and the logits (float32: versions
    are compared, not precisions, so no autocast whatever the CPU)."""
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        logits = model(**tokenizer(TEXT, return_tensors="pt")).logits
    return {**tokens(tokenizer), "logits": logits[0].tolist()}


def differs(found: dict, expected: dict) -> str | None:
    """Which part of two fingerprints differs, or None."""
    for key in [key for key in expected if key != "logits"]:
        if found[key] != expected[key]:
            return f"{key}: {found[key]!r} != {expected[key]!r}"
    if "logits" in expected and not torch.allclose(torch.tensor(found["logits"]), torch.tensor(expected["logits"]), atol=1e-5):
        return "the logits differ"
    return None


def check(what: str, found: dict, expected: dict) -> None:
    if problem := differs(found, expected):
        raise AssertionError(f"{what}: {problem}")


def save(work: Path) -> str:
    """With this venv's transformers: save the tiny model and the real tokenizer, and the fingerprints to match."""
    import transformers

    from dpo_edu.models import load_tokenizer

    tokenizer = load_tokenizer()
    model = tiny_model(len(tokenizer))
    model.save_pretrained(work / "saved", safe_serialization=True)
    tokenizer.save_pretrained(work / "saved")
    expected = {"saved": fingerprint(model, tokenizer), "cache": tokens(tokenizer)}
    (work / "expected.json").write_text(json.dumps(expected))
    return transformers.__version__


def gguf_tokenizer():
    """The tokenizer a first run builds from the embedded GGUF."""
    from transformers import AutoTokenizer

    from dpo_edu.models import GGUF_INSTALL, gguf_path

    if (gguf := gguf_path()) is None:
        raise AssertionError(f"the embedded model is not installed ({GGUF_INSTALL}; `make setup` does it)")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def run_course(work: Path) -> None:
    """In the floor's Python: load what the newer version saved, compare, sample, train a step, save."""
    from dpo_edu.generation import sample_completions
    from dpo_edu.models import load_model, load_tokenizer
    from dpo_edu.train import TrainConfig, train_dpo

    expected = json.loads((work / "expected.json").read_text())
    model, tokenizer = load_model(work / "saved", device="cpu")
    check("the saved model and tokenizer", fingerprint(model.eval(), tokenizer), expected["saved"])
    check("the course cache's tokenizer", tokens(load_tokenizer()), expected["cache"])
    check("the tokenizer built from the GGUF", tokens(gguf_tokenizer()), expected["cache"])
    sample_completions(model, tokenizer, [PROMPT], per_prompt=2, max_new_tokens=4, precision="fp32")
    # float32, as the fingerprints: on a CPU with bf16 "auto" would train in bf16; checkpointing: the floor has only
    # its old names (gradient_checkpointing_enable), the installed transformers the new ones
    config = TrainConfig(batch_size=2, max_steps=1, warmup_steps=0, max_length=32, max_prompt_length=16,
                         mixed_precision="fp32", gradient_checkpointing=True)
    history = train_dpo(model, tokenizer, EXAMPLES, config, progress=False)
    if not torch.isfinite(torch.tensor(history[0]["loss"])):
        raise AssertionError("the DPO step's loss is not finite")
    model.save_pretrained(work / "floor_saved", safe_serialization=True)
    tokenizer.save_pretrained(work / "floor_saved")
    (work / "floor_expected.json").write_text(json.dumps(fingerprint(model.eval(), tokenizer)))


def in_floor(work: Path, floor: Path, version: str) -> None:
    """Entry point of the second Python: make sure the floor is what was imported, then run the course."""
    import transformers

    if transformers.__version__ != version or not Path(transformers.__file__).is_relative_to(floor):
        raise AssertionError(f"imported transformers {transformers.__version__} from {transformers.__file__}, not {version} from {floor}")
    run_course(work)


def reload_floor_save(work: Path) -> None:
    """Back in this venv: load what the floor saved (a policy saved with the floor, read after an upgrade)."""
    from dpo_edu.models import load_model

    model, tokenizer = load_model(work / "floor_saved", device="cpu")
    check("what the floor saved", fingerprint(model.eval(), tokenizer), json.loads((work / "floor_expected.json").read_text()))


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip().rstrip(".") if lines else "no output"


def check_in_floor(work: Path, floor: Path, version: str) -> str | None:
    """Run `run_course` in a second Python with the floor first on its path; the last line of its error, or None."""
    path = os.pathsep.join(filter(None, [str(floor), os.environ.get("PYTHONPATH")]))
    child = subprocess.run([sys.executable, __file__, "--in-floor", str(work), str(floor), version],
                           env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    return None if child.returncode == 0 else last_line(child.stderr)


def check_floor(work: Path, floor: Path, version: str) -> str:
    """Both directions, in `work`; the one-line verdict (AssertionError or OSError when it fails)."""
    try:
        current = save(work)
    except Exception as error:  # e.g. no course cache and no embedded model: `make setup` installs it
        raise OSError(f"could not save the model to check with: {error}") from error
    if problem := check_in_floor(work, floor, version):
        raise AssertionError(f"transformers {version} cannot use what transformers {current} saved: {problem}. "
                             f"Raise the floor (pyproject.toml, environment.yml, the Makefile's FLOOR_TRANSFORMERS)")
    try:
        reload_floor_save(work)
    except Exception as error:  # one line, whatever transformers raised
        raise AssertionError(f"transformers {current} cannot read what {version} saved: {error}") from error
    return (f"transformers {version} reads what {current} saves (model, tokenizer, course cache), builds the same "
            f"tokenizer from the GGUF, samples and trains a DPO step, and {current} reads what it saves")


def main(floor: Path, version: str) -> int:
    started = time.perf_counter()
    if not (floor / "transformers").is_dir():
        print(f"check_floor: {floor} holds no transformers; run `make test-floor`, which installs it there", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dpo_edu_floor.") as folder:
        try:
            verdict = check_floor(Path(folder), floor, version)
        except (AssertionError, OSError) as error:
            print(f"check_floor: {error}", file=sys.stderr)
            return 1
    print(f"check_floor: {verdict} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--in-floor":
        in_floor(Path(sys.argv[2]), Path(sys.argv[3]).resolve(), sys.argv[4])
    elif len(sys.argv) == 3:
        sys.exit(main(Path(sys.argv[1]).resolve(), sys.argv[2]))
    else:
        sys.exit(__doc__)
