"""`dpo-edu diagnose`: real logs are read and their symptoms named; damaged files get one line naming the file.

The broken runs are real `train_dpo` runs on a tiny random Llama with the fault put back in by monkeypatching
`dpo_edu.train`, as the trainer prevents each fault on its own (a TrainConfig learning rate must be above 0, and the
warm-up is capped below the run's length), except every label masked, which train_dpo refuses: that log is built from
the course's full run (test_every_label_masked says how).
"""
import json
import math
from pathlib import Path

import pytest

from dpo_edu import cli
from dpo_edu import train as training
from dpo_edu.diagnosis import LN2, DiagnoseError, diagnose
from dpo_edu.train import TrainConfig, train_dpo
from conftest import REVIEW_PAIRS

FULL_RUN = Path(__file__).resolve().parent.parent / "docs" / "full_dpo_run" / "metrics.jsonl"
PAIRS = REVIEW_PAIRS
# 8 pairs in batches of 4 for 3 epochs: 6 optimizer steps
BASE = dict(beta=0.5, learning_rate=5e-3, batch_size=4, epochs=3, warmup_steps=1, max_length=16, max_prompt_length=8,
            mixed_precision="fp32", use_chat_template=False, seed=0)


def found(diagnosis) -> dict[str, str]:
    """{symptom: detail} of what the diagnosis found."""
    return {finding.symptom: finding.detail for finding in diagnosis.found}


def train_log(tokenizer, tinier_model, tmp_path, **settings) -> Path:
    """A real metrics.jsonl: train_dpo on PAIRS with BASE overridden by `settings`."""
    path = tmp_path / "metrics.jsonl"
    train_dpo(tinier_model(), tokenizer, PAIRS, TrainConfig(**{**BASE, **settings}), metrics_path=path,
              progress=False, log=None)
    return path


# ------------------------------------------------------------------------------------------------------ real logs

def test_the_course_full_run_shows_displacement_and_no_stall():
    diagnosis = diagnose(FULL_RUN)
    assert diagnosis.source == "dpo-edu metrics.jsonl" and len(diagnosis.records) == 79
    assert list(found(diagnosis)) == ["likelihood displacement"]
    assert "61 of 79 steps (77%" in found(diagnosis)["likelihood displacement"]
    assert "eval/kl 4.84 at step 40 -> 6.39 at step 79" in str(diagnosis)
    assert str(diagnosis).splitlines()[-1].startswith("no symptom found apart from likelihood displacement")


def test_a_healthy_run_at_a_high_learning_rate(tokenizer, tinier_model, tmp_path):
    diagnosis = diagnose(train_log(tokenizer, tinier_model, tmp_path))
    losses = [record["loss"] for record in diagnosis.records]
    assert len(losses) == 6 and abs(losses[-1] - LN2) > 0.01  # it learns
    assert not [finding for finding in diagnosis.found if finding.fault]
    assert "no symptom found" in diagnosis.summary()


def test_a_warm_up_never_left(tokenizer, tinier_model, tmp_path, monkeypatch):
    """Uncapped, a warm-up of 10^6 steps gives 6 steps learning rates of at most 5e-3 * 5e-6."""
    monkeypatch.setattr(training, "capped_warmup", lambda warmup_steps, total_steps: warmup_steps)
    diagnosis = diagnose(train_log(tokenizer, tinier_model, tmp_path, warmup_steps=10**6))
    detail = found(diagnosis)["loss stuck at ln 2"]
    assert "6 of 6 steps" in detail and "lr rises at every one" in detail and "warm-up" in detail


def test_a_one_step_run_at_lr_0(tokenizer, tinier_model, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "capped_warmup", lambda warmup_steps, total_steps: warmup_steps)
    diagnosis = diagnose(train_log(tokenizer, tinier_model, tmp_path, batch_size=8, epochs=1, warmup_steps=5))
    assert diagnosis.records[0]["lr"] == 0
    assert "lr is 0 at every one of these steps" in found(diagnosis)["loss stuck at ln 2"]


def test_every_label_masked(tmp_path):
    """train_dpo skips a pair that max_length leaves no response token of (and fails on a batch with no label at all),
    so this log is the course's full run as a fully masked run logs it: nothing scored, so log-probs, rewards and
    gradients 0 and the loss -log sigmoid(0) in float32, with the schedule's real learning rates."""
    zeros = dict.fromkeys(["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                           "logps/chosen", "logps/rejected", "grad_norm"], 0.0)
    rows = [{**json.loads(line), **zeros, "loss": 0.6931471824645996}
            for line in FULL_RUN.read_text(encoding="utf-8").splitlines()]
    detail = found(diagnose(write_log(tmp_path / "metrics.jsonl", rows)))["loss stuck at ln 2"]
    assert "79 of 79 steps" in detail and "every label is masked" in detail


def test_the_reference_is_the_live_policy(tokenizer, tinier_model, tmp_path, monkeypatch):
    loss = training.dpo_loss
    monkeypatch.setattr(training, "dpo_loss", lambda chosen, rejected, _ref_chosen, _ref_rejected, beta, **settings:
                        loss(chosen, rejected, chosen.detach(), rejected.detach(), beta, **settings))
    diagnosis = diagnose(train_log(tokenizer, tinier_model, tmp_path))
    assert len({record["logps/chosen"] for record in diagnosis.records}) > 1  # the policy does move
    assert "the reference moves with the policy" in found(diagnosis)["loss stuck at ln 2"]


def test_trivially_separable_pairs_collapse(tokenizer, tinier_model, tmp_path):
    """Every chosen response the same word, every rejected one another: a large beta separates them within steps."""
    pairs = [{"prompt": pair["prompt"], "chosen": " Yes.", "rejected": " No."} for pair in PAIRS]
    path = tmp_path / "metrics.jsonl"
    settings = {**BASE, "beta": 5.0, "learning_rate": 5e-2, "batch_size": 1, "epochs": 1}  # 8 steps, unseen pairs
    train_dpo(tinier_model(), tokenizer, pairs, TrainConfig(**settings), metrics_path=path, progress=False, log=None)
    assert "rewards/accuracies 1" in found(diagnose(path))["loss collapsed to 0"]


def test_a_loss_near_0_on_pairs_seen_before_is_not_a_collapse(tmp_path):
    """Epoch 2 measures pairs trained on once: a loss near 0 there is memorisation (the held-out loss tells)."""
    rows = [{"step": step, "epoch": int(step > 4), "loss": 0.69 if step <= 4 else 0.01, "rewards/accuracies": 1.0,
             "rewards/margins": 0.0 if step <= 4 else 6.0, "rewards/chosen": 1.0, "lr": 1e-4} for step in range(1, 9)]
    collapse = diagnose(write_log(tmp_path / "metrics.jsonl", rows)).findings[1]
    assert not collapse.found and collapse.detail.startswith("lowest first-epoch loss by step 10: 0.6900")
    for row in rows:
        row.pop("epoch")  # a log without epochs: every line counts
    assert diagnose(write_log(tmp_path / "metrics.jsonl", rows)).findings[1].found


def test_a_trl_trainer_state(tokenizer, tinier_model, tmp_path):
    trl = pytest.importorskip("trl", reason="trl is not installed: no TRL log to read")
    from datasets import Dataset

    from dpo_edu.trl_bridge import to_dpo_config

    args = to_dpo_config(TrainConfig(**BASE), tmp_path / "trl", report_to=[], save_strategy="no", disable_tqdm=True,
                         dataloader_pin_memory=False)
    trainer = trl.DPOTrainer(model=tinier_model(), args=args, train_dataset=Dataset.from_list(PAIRS),
                             processing_class=tokenizer)
    trainer.train()
    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    diagnosis = diagnose(tmp_path)  # the folder: its trainer_state.json
    assert diagnosis.source == "TRL trainer_state.json"
    assert [record["step"] for record in diagnosis.records] == [1, 2, 3, 4, 5, 6]  # not TRL's summary record
    logged = json.loads((tmp_path / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    assert [record["lr"] for record in diagnosis.records] == [record["learning_rate"] for record in logged[:6]]
    assert "loss stuck at ln 2" not in found(diagnosis) and "no eval/kl" in str(diagnosis)


def write_log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_notebook_06_exercise_logs_get_the_exercise_answers(tmp_path):
    """The four logs of notebook 06's Exercise 2, in metrics.jsonl's names, diagnosed as its solution says."""
    from dpo_edu.exercises.nb06 import _06_LOG_CAUSES, run_logs_06

    names = {"margin": "rewards/margins", "chosen": "logps/chosen", "rejected": "logps/rejected"}
    telltale = {"labels masked": "every label is masked", "reference is the policy": "moves with the policy",
                "learning rate 0": "lr is 0 at every one"}
    for run, rows in run_logs_06().items():
        path = write_log(tmp_path / f"{run}.jsonl", [{names.get(k, k): v for k, v in row.items()} for row in rows])
        stall = found(diagnose(path)).get("loss stuck at ln 2")
        cause = _06_LOG_CAUSES[run]
        assert (stall is None) if cause == "healthy" else telltale[cause] in stall, (run, stall)


def test_nan_and_kl_runaway(tmp_path):
    rows = [{"step": step, "loss": 0.6 - 0.01 * step, "grad_norm": 5.0, "lr": 1e-5} for step in range(1, 9)]
    rows[5].update(loss=math.nan, grad_norm=math.inf)
    rows[3]["eval/kl"], rows[7]["eval/kl"] = 2.0, 9.0
    found_ = found(diagnose(write_log(tmp_path / "metrics.jsonl", rows)))
    assert found_["NaN or inf"].startswith("first at step 6")
    assert "eval/kl 2 at step 4 -> 9 at step 8 (x4.50" in found_["KL running away"]


# ------------------------------------------------------------------------------------------------- damaged files

def damaged(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DiagnoseError) as error:
        diagnose(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_damaged_or_foreign_files(tmp_path):
    lines = FULL_RUN.read_text(encoding="utf-8").splitlines()
    assert "not valid JSON at line 3" in damaged(tmp_path, "cut.jsonl", "\n".join(lines[:2] + [lines[2][:50]]))
    assert "empty" in damaged(tmp_path, "empty.jsonl", "")
    assert "without 'log_history'" in damaged(tmp_path, "state.json", json.dumps({"global_step": 3}, indent=2))
    assert "no records with a 'loss'" in damaged(tmp_path, "rows.jsonl", '{"step": 1}\n{"step": 2}\n')
    assert "not valid JSON at line 4" in damaged(tmp_path, "t.json", '{\n "log_history": [\n  {"loss": 0.6}\n')
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DiagnoseError, match="folder: a folder with neither metrics.jsonl nor trainer_state.json"):
        diagnose(folder)


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_diagnose(tmp_path, capsys):
    assert cli.main(["diagnose", str(FULL_RUN)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{FULL_RUN}: dpo-edu metrics.jsonl, 79 logged steps (1 to 79)")
    assert "FOUND likelihood displacement" in out and "see notebook 09 §3" in out
    (tmp_path / "cut.jsonl").write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "lo', encoding="utf-8")
    assert cli.main(["diagnose", str(tmp_path / "cut.jsonl")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"dpo-edu diagnose: {tmp_path / 'cut.jsonl'}: not valid JSON at line 2")
    assert cli.main(["diagnose", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: cannot be read" in capsys.readouterr().err


def test_a_trl_run_with_evaluation_gives_its_eval_loss_to_the_step_before(tokenizer, tinier_model, tmp_path):
    """TRL logs each evaluation as a record of its own (eval_loss, no loss): it joins the step it follows."""
    trl = pytest.importorskip("trl", reason="trl is not installed: no TRL log to read")
    from datasets import Dataset

    from dpo_edu.trl_bridge import to_dpo_config

    args = to_dpo_config(TrainConfig(**BASE), tmp_path / "trl", report_to=[], save_strategy="no", disable_tqdm=True,
                         dataloader_pin_memory=False, eval_strategy="steps", eval_steps=2)
    trainer = trl.DPOTrainer(model=tinier_model(), args=args, train_dataset=Dataset.from_list(PAIRS[:6]),
                             eval_dataset=Dataset.from_list(PAIRS[6:]), processing_class=tokenizer)
    trainer.train()
    trainer.state.save_to_json(str(tmp_path / "trainer_state.json"))
    logged = json.loads((tmp_path / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    evals = {record["step"]: record["eval_loss"] for record in logged if "eval_loss" in record}
    assert sorted(evals) == [2, 4, 6]
    records = diagnose(tmp_path).records
    assert {record["step"]: record["eval/loss"] for record in records if "eval/loss" in record} == evals
    assert "held-out loss rising" in [finding.symptom for finding in diagnose(tmp_path).findings]


def test_a_held_out_loss_rising_while_the_training_loss_falls(tmp_path):
    rows = [{"step": step, "loss": 0.69 - 0.08 * step, "grad_norm": 5.0, "lr": 1e-4} for step in range(1, 9)]
    for step, value in ((2, 0.68), (4, 0.66), (6, 0.70), (8, 0.75)):
        rows[step - 1]["eval/loss"] = value
    finding = diagnose(write_log(tmp_path / "metrics.jsonl", rows)).findings[-1]
    assert finding.found and finding.steps == (6, 8)
    assert finding.detail.startswith("eval/loss lowest 0.6600 at step 4, 0.7500 at step 8; training loss 0.3700")
    for row, value in zip(rows[1::2], (0.68, 0.66, 0.65, 0.64)):  # falling with it: healthy
        row["eval/loss"] = value
    assert not diagnose(write_log(tmp_path / "metrics.jsonl", rows)).findings[-1].found


def test_diagnose_is_importable_from_the_package():
    import dpo_edu

    assert dpo_edu.diagnose is diagnose and callable(dpo_edu.diagnose)


# ------------------------------------------------------------------------------------ the clinic's own logs

CLINIC_LOGS = Path(__file__).resolve().parent / "data" / "clinic"


@pytest.mark.parametrize("name, symptom, telltale", [
    ("one_step", "loss stuck at ln 2", "no step after the first update is logged"),
    ("masked_labels", "loss stuck at ln 2", "every label is masked"),
    ("live_reference", "loss stuck at ln 2", "the reference moves with the policy"),
    ("template", "loss collapsed to 0", "told apart trivially"),
    ("lr_0.001", "held-out loss rising", "stop at the lowest held-out loss"),
    ("pure_fp16", "NaN or inf", "first at step 2"),
])
def test_each_symptom_of_the_clinic_is_found_in_the_log_its_reproduction_wrote(name, symptom, telltale):
    """Notebook 09's full run wrote these logs (tests/data/clinic/README.md); each shows its symptom and no other fault."""
    diagnosis = diagnose(CLINIC_LOGS / f"{name}.jsonl")
    faults = [finding.symptom for finding in diagnosis.found if finding.fault]
    assert faults == [symptom] and telltale in found(diagnosis)[symptom]


def test_the_clinic_healthy_run_is_flagged_with_nothing():
    diagnosis = diagnose(CLINIC_LOGS / "healthy.jsonl")
    assert diagnosis.found == [] and diagnosis.summary() == "no symptom found"
