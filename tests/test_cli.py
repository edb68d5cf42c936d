import subprocess
import sys

from dpo_edu import cli


def test_verify_passes_and_prints_each_step(capsys):
    assert cli.main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "5 partition_cancels: True" in out and "ODPO offset outside the sigmoid: False" in out
    assert "all checks passed" in out


def test_verify_fails_when_a_slip_passes(monkeypatch, capsys):
    from dpo_edu import derivations

    monkeypatch.setitem(derivations.SLIPS, "a slip that holds", lambda: True)
    assert cli.main(["verify"]) == 1
    assert "SOME CHECKS FAILED" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "dpo_edu.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "verify" in result.stdout
