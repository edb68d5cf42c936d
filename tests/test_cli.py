import subprocess
import sys

import pytest

from dpo_edu import cli
from dpo_edu.cli import main


def test_verify_passes_and_prints_each_step(capsys):
    assert cli.main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "5 partition_cancels: True" in out and "ODPO offset outside the sigmoid: False" in out
    assert "all checks passed" in out


@pytest.mark.parametrize("step_holds, slip_holds", [(True, True), (False, False)], ids=["a slip holds", "a step fails"])
def test_verify_fails_when_a_slip_passes(monkeypatch, capsys, step_holds, slip_holds):
    from dpo_edu import derivations

    # one step and one slip, each a stand-in for the sympy checks (which the test above runs, and test_derivations.py)
    monkeypatch.setattr(derivations, "STEPS", {"a step": lambda: step_holds})
    monkeypatch.setattr(derivations, "SLIPS", {"a slip": lambda: slip_holds})
    assert cli.main(["verify"]) == 1
    assert "SOME CHECKS FAILED" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "dpo_edu.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "verify" in result.stdout


def test_run_passes_the_loss_options(monkeypatch, tmp_path):
    import dpo_edu.run

    seen = {}
    monkeypatch.setattr(dpo_edu.run, "run", lambda *args, **kwargs: seen.update(kwargs) or {"steps": 1})
    assert main(["run", "--out", str(tmp_path / "r"), "--loss-type", "simpo", "--beta", "2", "--simpo-gamma", "0.8"]) == 0
    assert seen["loss"] == {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.8}
    assert main(["run", "--out", str(tmp_path / "r")]) == 0 and seen["loss"] is None


def test_run_names_a_bad_loss_setting_before_any_work(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--profile", "smoke", "--out", str(out), "--loss-type", "ipo", "--label-smoothing", "0.1"]) == 2
    assert "label_smoothing applies to loss_type 'sigmoid' (cDPO) or 'robust' only" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["run", "--loss-type", "kto"])
    assert "invalid choice: 'kto'" in capsys.readouterr().err


def test_run_passes_the_input_options(monkeypatch, tmp_path):
    import dpo_edu.run

    seen = {}
    monkeypatch.setattr(dpo_edu.run, "run", lambda *args, **kwargs: seen.update(kwargs) or {"steps": 1})
    assert main(["run", "--out", str(tmp_path / "r"), "--pairs", "p.jsonl", "--heldout-fraction", "0.2", "--max-length", "256"]) == 0
    assert seen["pairs"] == "p.jsonl" and seen["heldout_fraction"] == 0.2 and seen["loss"] == {"max_length": 256}
    assert main(["run", "--out", str(tmp_path / "r"), "--prompts", "p.txt", "--reward", "r.py:reward", "--model", "m"]) == 0
    assert (seen["prompts"], seen["reward"], seen["model"], seen["pairs"]) == ("p.txt", "r.py:reward", "m", None)


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5", "nan", "half"])
def test_heldout_fraction_is_checked_by_the_parser_naming_the_flag(monkeypatch, capsys, value):
    import dpo_edu.run

    monkeypatch.setattr(dpo_edu.run, "run", lambda *args, **kwargs: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--pairs", "p.jsonl", "--heldout-fraction", value])
    assert exit_.value.code == 2
    assert "argument --heldout-fraction: " in capsys.readouterr().err


def test_heldout_fraction_out_of_range_fails_before_any_work(monkeypatch, tmp_path):
    import dpo_edu.run
    import dpo_edu.stages

    monkeypatch.setattr(dpo_edu.stages, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ValueError, match=r"^--heldout-fraction must be at least 0 and below 1 .*, got 1.0$"):
        dpo_edu.run.run("smoke", tmp_path / "r", pairs="p.jsonl", heldout_fraction=1.0)
    assert not (tmp_path / "r").exists()
