"""`dpo-edu run` on a user's own data: --pairs (TRL standard and conversational), --prompts with --reward, and their errors.

The runs are smoke-sized on the real model; every input file is written by the test itself.
"""
import contextlib
import io
import json
import math
import re

import pytest

from dpo_edu.cli import main
from dpo_edu.data import as_standard, load_preferences
from dpo_edu.prompts import read_prompts
from dpo_edu.rewards import checked_rewards, load_reward
from dpo_edu.stages import split_heldout

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
STANDARD = [{"prompt": f"My favourite colour is {colour} because", "chosen": " it is calm and bright.",
             "rejected": " no."} for colour in COLOURS] + [
            {"prompt": f"The {colour} car was", "chosen": " fast and clean.", "rejected": " broken, sadly."} for colour in COLOURS]
CONVERSATIONAL = [{"prompt": [{"role": "user", "content": f"Describe the colour {colour} in a few words."}],
                   "chosen": [{"role": "assistant", "content": f"{colour.title()} is warm and lively."}],
                   "rejected": [{"role": "assistant", "content": "I don't know."}]} for colour in COLOURS * 2]

REWARD_FILE = '''
CALLS = []

def reward(prompts, completions, **kwargs):
    """Longer is better: the number of words, TRL's convention."""
    CALLS.append((len(prompts), len(completions)))
    assert len(prompts) == len(completions)
    return [float(len(c.split())) for c in completions]
'''


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_ok(*args):
    assert main(["run", "--profile", "smoke", "--quiet", *map(str, args)]) == 0


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ --pairs

TWO_PAIRS = [STANDARD[0], STANDARD[6]]  # two prompts: one to train on (one optimizer step), one held out


@pytest.fixture(scope="module")
def standard_run(tmp_path_factory):
    """--pairs at its smallest: one pair to train on and one held out; what the run printed is in ../printed.txt."""
    folder = tmp_path_factory.mktemp("standard")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_ok("--pairs", write_jsonl(folder / "pairs.jsonl", TWO_PAIRS), "--heldout-fraction", 0.5, "--out", folder / "run")
    (folder / "printed.txt").write_text(printed.getvalue(), encoding="utf-8")
    return folder / "run"


def test_pairs_run_trains_from_the_reference_and_holds_out_whole_prompts(standard_run):
    summary = json.loads((standard_run / "summary.json").read_text())
    rows = metrics(standard_run)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and rows[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
    train = [json.loads(line) for line in (standard_run / "pairs.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (standard_run / "heldout_pairs.jsonl").read_text().splitlines()]
    assert len(train) + len(heldout) == len(TWO_PAIRS) and len(heldout) >= 0.5 * len(TWO_PAIRS)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in heldout}
    assert summary["task"] == "pairs" and summary["pairs"]["heldout_pairs"] == len(heldout)
    assert [e["step"] for e in summary["evaluations"]][0] == 0 and summary["evaluations"][-1]["step"] == summary["steps"]
    first, final = summary["evaluations"][0], summary["final"]
    assert first["accuracy"] == 0 and first["margin"] == 0 and first["kl"] == 0
    assert 0 <= final["accuracy"] <= 1
    assert final["margin"] == pytest.approx(final["chosen_reward"] - final["rejected_reward"], abs=1e-6)
    report = (standard_run / "report.md").read_text(encoding="utf-8")
    assert "| accuracy (chosen reward > rejected reward) |" in report and "(ln 2 = 0.6931)" in report


def test_a_tiny_pairs_file_trains_and_prints_no_nan(standard_run, real_model):
    """One training pair is one optimizer step: it must train (its warm-up must not leave the learning rate at 0: the
    saved policy was once the reference, byte for byte), and one held-out pair has no standard error ("± nan" once)."""
    import torch

    from dpo_edu.models import load_model

    printed = (standard_run.parent / "printed.txt").read_text(encoding="utf-8")
    assert "± nan" not in printed and "margin +" in printed and "(1 pair: no SE)" in printed
    report = (standard_run / "report.md").read_text(encoding="utf-8")
    assert "± nan" not in report and "| margin ± SE | +" in report and "(1 pair: no SE) |" in report
    policy, _ = load_model(standard_run / "policy", device="cpu")
    reference, _ = real_model
    changed = [name for name, weight in policy.state_dict().items() if not torch.equal(weight, reference.state_dict()[name])]
    assert changed, "the one step trained nothing"


def test_the_saved_policy_loads_with_transformers(standard_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(standard_run / "policy")
    tokenizer = AutoTokenizer.from_pretrained(standard_run / "policy")
    with torch.no_grad():
        logits = model(**tokenizer("The sky is", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_the_saved_policy_loads_in_trl(standard_run, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = [json.loads(line) for line in (standard_run / "pairs.jsonl").read_text().splitlines()]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True)
    trainer = DPOTrainer(model=str(standard_run / "policy"), args=args, train_dataset=Dataset.from_list(pairs))
    trainer.train()  # one step of TRL's own DPO on the saved policy
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_a_conversational_file_trains_through_the_chat_template(tmp_path):
    chats = CONVERSATIONAL[:4]  # four prompts: one held out, one optimizer step on the other three
    pairs = write_jsonl(tmp_path / "chat.jsonl", chats)
    run_ok("--pairs", pairs, "--out", tmp_path / "run", "--max-length", 96, "--max-prompt-length", 64)
    rows = metrics(tmp_path / "run")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    trained = [json.loads(line) for line in (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()]
    assert all(row["prompt"].startswith("<|im_start|>") and row["prompt"].endswith("<|im_start|>assistant\n") for row in trained)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["pairs"]["conversational"] == len(chats)


def test_as_standard_renders_a_conversation_as_trl_does():
    trl_data = pytest.importorskip("trl.data_utils")
    from dpo_edu.models import load_tokenizer

    tokenizer = load_tokenizer()
    ours, theirs = as_standard(tokenizer, CONVERSATIONAL[0]), trl_data.apply_chat_template(CONVERSATIONAL[0], tokenizer)
    assert ours["prompt"] == theirs["prompt"]
    for field in ("chosen", "rejected"):  # TRL keeps the closing "<|im_end|>\n"; tokenize_pair appends EOS itself
        assert theirs[field].rstrip() == ours[field] + tokenizer.eos_token


def test_a_missing_pairs_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--pairs", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "nope.jsonl: no such file" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("row, where", [
    ({"prompt": "a", "chosen": "b"}, "line 2, field 'rejected': missing"),
    ({"prompt": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": "c"}, "line 2, field 'chosen': expected a non-empty list"),
    ({"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "user", "content": "b"}],
      "rejected": [{"role": "assistant", "content": "c"}]}, "line 2, field 'chosen': a reply holds only assistant messages"),
    ({"prompt": [{"role": "bot", "content": "a"}], "chosen": [], "rejected": []}, "line 2, field 'prompt': message 0 must be"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": "high", "rejected_score": 0}, "line 2, field 'chosen_score'"),
])
def test_a_bad_pairs_file_names_file_line_and_field(tmp_path, capsys, row, where):
    pairs = write_jsonl(tmp_path / "bad.jsonl", [STANDARD[0], row])
    assert main(["run", "--profile", "smoke", "--pairs", str(pairs), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"bad.jsonl, {where}" in error, error
    assert not (tmp_path / "run").exists()


def test_pairs_and_a_reward_together_are_refused(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", STANDARD)
    assert main(["run", "--profile", "smoke", "--pairs", str(pairs), "--reward", "x.py:f", "--out", str(tmp_path / "run")]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_split_heldout_keeps_prompts_whole_and_is_seeded():
    rows = [{"prompt": f"p{i // 3}", "chosen": "a", "rejected": "b"} for i in range(30)]
    train, heldout = split_heldout(rows, 0.1, seed=0)
    assert len(train) + len(heldout) == 30 and len(heldout) == 3
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert split_heldout(rows, 0.1, seed=0) == (train, heldout) and split_heldout(rows, 0.1, seed=1) != (train, heldout)
    assert split_heldout(rows, 0.0, seed=0) == (rows, []) or split_heldout(rows, 0.0, seed=0)[1] == []
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_heldout(rows, 1.0, seed=0)


def test_load_preferences_keeps_conversational_rows():
    import tempfile
    from pathlib import Path

    path = write_jsonl(Path(tempfile.mkdtemp()) / "chat.jsonl", CONVERSATIONAL[:2] + [STANDARD[0]])
    rows = load_preferences(path)
    assert rows[0]["prompt"] == CONVERSATIONAL[0]["prompt"] and rows[2] == STANDARD[0]


# ------------------------------------------------------------ --prompts and --reward

SERVER_REWARD = '''from pathlib import Path


def reward(prompts, completions, **kwargs):
    """Longer is better (the number of words), from a server that may be down or not ready (its state: mode.txt)."""
    mode = (Path(__file__).parent / "mode.txt").read_text().strip()
    if mode == "down":
        raise RuntimeError("my reward server is down")
    return [float(len(c.split())) if mode == "up" else 0.0 for c in completions]
'''


def test_a_failing_reward_loses_no_samples_and_a_failed_report_resumes(tmp_path, monkeypatch, capsys):
    """--prompts and --reward through the whole pipeline, after the reward raised (once a traceback that deleted the
    samples), then scored every sample alike (once "no training examples"), and the report failed (once summary.json
    was written first, so --resume refused the folder as finished)."""
    from dpo_edu import stages

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"A short story about a {colour} fox:\n" for colour in COLOURS), encoding="utf-8")
    reward, mode, out = tmp_path / "my_reward.py", tmp_path / "mode.txt", tmp_path / "run"
    reward.write_text(SERVER_REWARD, encoding="utf-8")
    mode.write_text("down")
    assert main(["run", "--profile", "smoke", "--quiet", "--prompts", str(prompts), "--reward", f"{reward}:reward",
                 "--heldout-fraction", "0.25", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and (f"reward function reward ({reward}, line 4) raised RuntimeError at {reward}, line 8: "
                                  "my reward server is down") in error
    assert f"`dpo-edu run --out {out} --resume` continues" in error
    assert (out / "samples.json").is_file() and not (out / "pairs.jsonl").exists()

    sample_completions = stages.sample_completions
    monkeypatch.setattr(stages, "sample_completions", lambda *args, per_prompt=1, **kwargs: pytest.fail("sampled again")
                        if per_prompt > 1 else sample_completions(*args, per_prompt=per_prompt, **kwargs))
    resume = ["run", "--out", str(out), "--resume", "--quiet"]
    mode.write_text("flat")
    assert main(resume) == 2
    error = capsys.readouterr().err.strip()
    assert re.search(r"reward function reward \(.*\) gave all 16 samples the same score \(0\), so no sample is better than "
                     r"another .*give the reward some spread.*--resume` continues", error) and "\n" not in error
    assert not (out / "pairs.jsonl").exists()

    mode.write_text("up")
    def disk_full(*args):
        raise OSError("disk full")

    from dpo_edu import stages  # write_report writes report.md

    monkeypatch.setattr(stages, "markdown_report", disk_full)
    with pytest.raises(OSError, match="disk full"):
        main(resume)
    assert (out / "policy" / "model.safetensors").is_file() and (out / "checkpoints").is_dir()
    assert not (out / "summary.json").exists()  # written last: the folder is not finished, so it resumes
    monkeypatch.undo()
    assert main(resume) == 0
    assert not (out / "checkpoints").exists() and (out / "report.md").is_file()

    rows = metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(pair["chosen_score"] == len(pair["chosen"].split()) for pair in pairs)  # the user's reward made them
    assert all(pair["chosen_score"] - pair["rejected_score"] >= 0.1 for pair in pairs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "prompts" and summary["inputs"]["reward"] == f"{reward}:reward" and summary["resumed"]
    assert summary["heldout_prompts"] == 2 and 0 <= summary["final"]["win_rate"] <= 1  # 0.25 of 6 prompts, rounded up
    assert summary["evaluations"][0]["kl"] == 0 and summary["evaluations"][-1]["step"] == summary["steps"]
    assert "reward: " + f"{reward}:reward" in (out / "report.md").read_text(encoding="utf-8")


def test_resume_refuses_a_prompts_or_reward_file_changed_since_the_start(tmp_path, monkeypatch, capsys):
    """An edited prompts file once re-split the held-out prompts on --resume: the report evaluated on trained prompts."""
    import hashlib

    from dpo_edu import stages
    from dpo_edu.rundir import MARKER, RunFolder

    monkeypatch.setattr(stages, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    prompts, reward, out = tmp_path / "prompts.txt", tmp_path / "my_reward.py", tmp_path / "run"
    prompts.write_text("one\ntwo\nthree\nfour\n", encoding="utf-8")
    reward.write_text(REWARD_FILE, encoding="utf-8")

    def fingerprint(path):
        return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    out.mkdir()
    (out / MARKER).write_text(json.dumps({
        "kind": "run", "format": 1, "profile": "smoke", "model": None, "precision": "auto", "loss": None, "pairs": None,
        "prompts": str(prompts), "reward": f"{reward}:reward", "heldout_fraction": 0.25,
        "inputs": {"prompts": fingerprint(prompts), "reward": fingerprint(reward)}}))
    write_jsonl(out / "pairs.jsonl", STANDARD[:2])  # the reward has scored pairs
    original = prompts.read_bytes()
    for edited, used in ((prompts, "its samples and held-out prompts"), (reward, "the scores of its pairs")):
        before = edited.read_bytes()
        edited.write_bytes(before + b"\n# edited\n" if edited == reward else before + b"five\n")
        assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{edited} has changed since {out} was started ({used} came from the earlier version" in error, error
        assert "--overwrite" in error and "\n" not in error
        edited.write_bytes(before)
    assert prompts.read_bytes() == original

    from dpo_edu.run import check_inputs, input_fingerprints

    (out / "pairs.jsonl").unlink()  # only samples so far: a fixed reward scores them again, and is recorded
    reward.write_text(REWARD_FILE + "\n# fixed\n", encoding="utf-8")
    with RunFolder.check(out, "run", resume=True) as folder:
        check_inputs(folder, input_fingerprints(prompts=prompts, reward=f"{reward}:reward"))
    assert json.loads((out / MARKER).read_text())["inputs"]["reward"] == fingerprint(reward)


def test_a_reward_that_scores_every_sample_alike_is_named(tmp_path, real_model):
    from dpo_edu.rewards import RewardError
    from dpo_edu.stages import sample_pairs

    def flat(prompts, completions, **kwargs):
        return [True] * len(completions)

    model, tokenizer = real_model
    with pytest.raises(RewardError, match=r"reward function .*flat \(.*\) gave all 3 samples the same score \(1\)"):
        sample_pairs(model, tokenizer, ["Say something kind."], flat, per_prompt=3, max_new_tokens=4, batch_size=8, seed=0,
                     rule="best_vs_worst", min_gap=0.1, samples_path=tmp_path / "samples.json")
    assert json.loads((tmp_path / "samples.json").read_text())["per_prompt"] == 3  # kept, scored again on --resume


def test_a_conversational_prompt_reaches_the_reward_as_messages(tmp_path, real_model):
    from dpo_edu.stages import sample_pairs

    seen = {}

    def reward(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [float(len(c[-1]["content"])) for c in completions]

    model, tokenizer = real_model
    prompts = [[{"role": "user", "content": "Say something kind."}]]
    pairs, counts = sample_pairs(model, tokenizer, prompts, reward, per_prompt=3, max_new_tokens=4, batch_size=8, seed=0,
                                 rule="best_vs_worst", min_gap=0.0)
    assert seen["prompts"] == prompts * 3 and all(c[0]["role"] == "assistant" for c in seen["completions"])
    assert counts["samples"] == 3 and pairs[0]["prompt"].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "expected module:function"),
    ("missing.py:reward", "missing.py is not a file"),
    ("dpo_edu_no_such_module:reward", "cannot import module"),
    ("dpo_edu.rewards:no_such_function", "has no 'no_such_function'"),
])
def test_load_reward_names_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        load_reward(spec)


def test_load_reward_reads_module_and_file_specs(tmp_path):
    from dpo_edu.rewards import sentiment

    assert load_reward("dpo_edu.rewards:sentiment") is sentiment
    path = tmp_path / "r.py"
    path.write_text(REWARD_FILE, encoding="utf-8")
    assert load_reward(f"{path}:reward")(prompts=["a"], completions=["one two"]) == [2.0]


@pytest.mark.parametrize("returned, message", [
    ([1.0], "returned 1 rewards for 2 completions"),
    ([1.0, float("nan")], "non-finite reward"),
    ("ab", "must return a list of numbers"),
])
def test_a_misbehaving_reward_is_named(returned, message):
    def bad(prompts, completions, **kwargs):
        return returned

    with pytest.raises(ValueError, match=message):
        checked_rewards(bad, ["p", "q"], ["a", "b"])


def test_read_prompts_reads_txt_and_jsonl_and_names_bad_lines(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\r\n", encoding="utf-8")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    chat = [{"role": "user", "content": "hi"}]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "plain"}, {"prompt": chat}])
    assert read_prompts(tmp_path / "p.jsonl") == ["plain", chat]
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "plain"}, {"text": "x"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2, field 'prompt'"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")


def test_prompts_without_heldout_are_refused(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("one\ntwo\n", encoding="utf-8")
    assert main(["run", "--profile", "smoke", "--prompts", str(tmp_path / "p.txt"), "--heldout-fraction", "0",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--heldout-fraction must be above 0" in capsys.readouterr().err


# ------------------------------------------------------------ pairs files that leave nothing to train or evaluate on

def test_a_pairs_file_with_nothing_to_train_or_evaluate_on_is_refused_before_the_folder(tmp_path, capsys):
    """One prompt only: nothing could be held out, and the run reported on nothing. A prompt ending in a space before a
    reply starting with one: "none of the 1 examples can be trained on", with no file, line or fix."""
    out = tmp_path / "run"
    one_prompt = write_jsonl(tmp_path / "one.jsonl", [STANDARD[0], {**STANDARD[0], "chosen": " it is lovely."}])
    assert main(["run", "--profile", "smoke", "--quiet", "--pairs", str(one_prompt), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{one_prompt}: all 2 pairs share one prompt, so none can be held out for evaluation; add pairs with other " \
           "prompts, or pass --heldout-fraction 0" in error and "\n" not in error
    seam = write_jsonl(tmp_path / "seam.jsonl", [{"prompt": "Question 0: is it good? ", "chosen": " yes", "rejected": " no"}])
    assert main(["run", "--profile", "smoke", "--quiet", "--pairs", str(seam), "--heldout-fraction", "0", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"dpo-edu run: {seam}, line 1, field 'chosen': the prompt's last token merges with the reply's first at "
                     "'is it good? ' + ' yes', so the prompt's tokens would change; end the prompt without that space and start "
                     "the reply with it; none of the 1 training pairs can be used")
    assert not out.exists()
