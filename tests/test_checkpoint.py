"""Nothing is lost: checkpoints, resume, Ctrl-C and a non-finite loss, on a tiny random Llama (CPU)."""
import json
import os
import signal

import pytest
import torch

from dpo_edu.checkpoint import load_latest
from dpo_edu.train import TrainConfig, TrainingStopped, train_dpo

EXAMPLES = [
    {"prompt": f"Review {i}:", "chosen": f" lovely film number {i}, warm and funny.", "rejected": f" dull film {i}."}
    for i in range(10)
]
CONFIG = dict(learning_rate=1e-3, batch_size=4, gradient_accumulation_steps=2, epochs=3, warmup_steps=2,
              max_length=48, max_prompt_length=16, seed=5)  # 10 pairs / 4 = 3 steps per epoch (the last one short)


def without_timing(history):
    return [{k: v for k, v in row.items() if k != "tokens_per_second"} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(tokenizer, tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("whole")
    history = train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False,
                        metrics_path=folder / "metrics.jsonl", log=None)
    assert len(history) == 9
    return history


def assert_same_run(history, expected):
    assert len(history) == len(expected)
    for got, want in zip(without_timing(history), without_timing(expected)):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (got["step"], key)


@pytest.mark.parametrize("crash_at_step", [2, 3, 5])  # mid-epoch, an epoch's last step, the next epoch
def test_resume_after_a_crash_ends_like_an_uninterrupted_run(tokenizer, tmp_path, uninterrupted, crash_at_step, tiny_model):
    def crash(record):
        if record["step"] == crash_at_step:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                  metrics_path=tmp_path / "metrics.jsonl", checkpoint_dir=tmp_path / "checkpoints", checkpoint_every=1, on_step=crash)
    assert load_latest(tmp_path / "checkpoints", TrainConfig(**CONFIG)).state["step"] == crash_at_step - 1
    resumed = train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                        metrics_path=tmp_path / "metrics.jsonl", checkpoint_dir=tmp_path / "checkpoints", resume=True)
    assert_same_run(resumed, uninterrupted)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert_same_run(lines, uninterrupted)  # the metrics file too: no step missing, none twice


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tokenizer, tmp_path, uninterrupted, tiny_model):
    def press_ctrl_c(record):
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; CI may run with SIGINT ignored
    try:
        with pytest.raises(TrainingStopped, match=r"interrupted after step 4 of 9; checkpoint saved in .*step-000004"):
            train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                      checkpoint_dir=tmp_path, on_step=press_ctrl_c)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, previous)
    resumed = train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                        checkpoint_dir=tmp_path, resume=True)
    assert_same_run(resumed, uninterrupted)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path, tiny_model):
    model = tiny_model()

    def poison(record):  # after step 3's update, between checkpoints (every 2 steps)
        if record["step"] == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingStopped, match=r"non-finite loss \(nan\) at step 4.*last good checkpoint is in"):
        train_dpo(model, tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None, on_step=poison,
                  checkpoint_dir=tmp_path, checkpoint_every=2)
    saved = load_latest(tmp_path, TrainConfig(**CONFIG))
    assert saved.state["step"] == 2
    from safetensors.torch import load_file

    weights = load_file(str(saved.folder / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_checkpoints_are_whole_safe_to_load_and_only_the_newest_is_kept(tokenizer, tmp_path, tiny_model):
    train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
              checkpoint_dir=tmp_path, checkpoint_every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000009"]
    folder = tmp_path / "step-000009"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.pt", "tensors.safetensors", "trainer_state.json"]
    torch.load(folder / "optimizer.pt", weights_only=True)  # no pickled code in it
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 9 and len(state["history"]) == 9 and state["config"]["learning_rate"] == 1e-3


def test_resume_refuses_another_config_or_a_missing_checkpoint(tokenizer, tmp_path, tiny_model):
    train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False, log=None,
              checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"another TrainConfig.*learning_rate 0.001 -> 0.002"):
        train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**{**CONFIG, "epochs": 1, "learning_rate": 2e-3}),
                  progress=False, log=None, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                  checkpoint_dir=tmp_path / "nothing", resume=True)


def test_a_checkpoint_that_names_float32_as_accelerate_does_still_resumes(tokenizer, tmp_path, tiny_model):
    """Checkpoints written before dpo_edu.precision recorded float32 as accelerate's "no"; the course now says "fp32"."""
    config = TrainConfig(**{**CONFIG, "epochs": 1, "mixed_precision": "fp32"})
    history = train_dpo(tiny_model(), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path)
    (state_path,) = tmp_path.glob("step-*/trainer_state.json")
    state = json.loads(state_path.read_text())
    state["config"]["mixed_precision"] = "no"
    state_path.write_text(json.dumps(state))
    resumed = train_dpo(tiny_model(), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path,
                        resume=True)
    assert without_timing(resumed) == without_timing(history)


def test_long_prompts_are_cut_and_seam_breaking_pairs_skipped_and_both_counted(tokenizer, tiny_model):
    long_prompt = {"prompt": "word " * 60 + "end:", "chosen": " good.", "rejected": " bad."}
    seam = {"prompt": "It was", "chosen": "n't good", "rejected": " fine"}
    messages = []
    config = TrainConfig(**{**CONFIG, "epochs": 1, "use_chat_template": False})  # plain text: "was" + "n't" meet at the seam
    history = train_dpo(tiny_model(), tokenizer, EXAMPLES[:3] + [long_prompt, seam], config, progress=False, log=messages.append)
    assert len(history) == 1  # 4 usable pairs: one step of 4
    assert messages == ["training pairs: skipped 1 of 5; 1 prompt truncated, 1 prompt tokens change at the seam "
                        "(max_length=48, max_prompt_length=16)"]
    with pytest.raises(ValueError, match="none of the 1 examples can be trained on: 1 prompt tokens change at the seam"):
        train_dpo(tiny_model(), tokenizer, [seam], config, progress=False, log=None)


def test_a_short_last_step_reports_the_mean_not_a_fraction(tokenizer, tiny_model):
    config = TrainConfig(**{**CONFIG, "epochs": 1})  # 10 pairs in micro-batches of 2: the third step has one micro-batch
    history = train_dpo(tiny_model(), tokenizer, EXAMPLES, config, progress=False, log=None)
    assert [round(row["loss"], 4) for row in history][:1] == [0.6931] and history[-1]["loss"] > 0.3


def test_an_ignored_sigint_stays_ignored(tokenizer, tmp_path, tiny_model):
    """In a background job SIGINT is ignored: training neither installs a handler nor stops."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def press_ctrl_c(record):
            os.kill(os.getpid(), signal.SIGINT)

        history = train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False,
                            log=None, on_step=press_ctrl_c)
        assert len(history) == 3 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("name", ["model.safetensors", "tensors.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_truncated_checkpoint_is_named_before_loading(tokenizer, tmp_path, name, tiny_model):
    """A checkpoint cut short (a full disk, a copy interrupted): one line naming the file, never a loader's traceback."""
    from dpo_edu.checkpoint import CheckpointError, latest_folder, verify

    train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False, log=None,
              checkpoint_dir=tmp_path)
    damaged = latest_folder(tmp_path) / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{damaged} is damaged \(.*\).*Delete {tmp_path} ") as caught:
        verify(latest_folder(tmp_path))
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(CheckpointError, match=f"{name} is damaged"):
        train_dpo(tiny_model(), tokenizer, EXAMPLES, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False, log=None,
                  checkpoint_dir=tmp_path, resume=True)
    damaged.unlink()
    with pytest.raises(CheckpointError, match=f"{name} is damaged \\(missing\\)"):
        verify(latest_folder(tmp_path))
