"""Notebook 00's exercises (predict which sign bugs pass ln 2, derive a DPO step's memory): the right answer passes,
a stub is "not attempted", and typical wrong answers fail with a hint that names the slip without giving the answer."""
import pytest

from dpo_edu import exercises as ex

RIGHT_GB = ex.SMOLLM2_PARAMETERS * 20 / 1e9  # float32 weights, gradients, AdamW's two averages, reference weights
MEMORY_GIVEAWAYS = ("2.69", "20 bytes", "2.7 GB", "2.6")


def _verdict(capsys, checker, *answer):
    result = checker(*answer)
    return result, capsys.readouterr().out


def test_training_memory_accepts_the_right_total(capsys):
    result, out = _verdict(capsys, ex.check_00_training_memory, RIGHT_GB)
    assert result is True and "correct" in out
    assert ex.check_00_training_memory(round(RIGHT_GB, 2)) is True  # typed to two decimals: a derivation, not a copy


def test_training_memory_not_attempted(capsys):
    result, out = _verdict(capsys, ex.check_00_training_memory, None)
    assert result is None and "not attempted" in out


@pytest.mark.parametrize("bytes_per_parameter, hint", [
    (4, "one float32 copy of the weights"),
    (8, "AdamW keeps a state"),
    (12, "two running averages per trained parameter, not one"),
    (16, "frozen reference model is missing"),
    (24, "the reference is frozen: it has no gradients"),
    (32, "neither gradients nor optimizer state"),
    (10, "half"),  # bf16 weights
    (160, "counts bits"),
])
def test_training_memory_names_each_slip_without_the_answer(capsys, bytes_per_parameter, hint):
    result, out = _verdict(capsys, ex.check_00_training_memory, ex.SMOLLM2_PARAMETERS * bytes_per_parameter / 1e9)
    assert result is False and hint in out, out
    assert not any(giveaway in out for giveaway in MEMORY_GIVEAWAYS), out


@pytest.mark.parametrize("answer, hint", [
    (RIGHT_GB * 1e9 / 2**30, "GiB"),
    (RIGHT_GB * 1000, "MB"),
    (1.0, "too little"),
    (50.0, "too much"),
    ("2.69 GB", "expected a real number"),
])
def test_training_memory_rejects_units_and_guesses(capsys, answer, hint):
    result, out = _verdict(capsys, ex.check_00_training_memory, answer)
    assert result is False and hint in out, out


def test_sign_bugs_prediction(capsys):
    """The predict exercise: only the bugs that flip the margin's sign (a, b) give ln 2 at step 1."""
    assert ex.check_00_sign_bugs({"a", "b"}) is True
    assert ex.check_00_sign_bugs(None) is None
    assert "not attempted" in capsys.readouterr().out
    for wrong, hint in (({"a"}, "you left out"), ({"c"}, "first loss other than ln 2"), (set(), "you left out"),
                        ({"a", "b", "d"}, "first loss other than ln 2"), ({"a", "z"}, "unknown label")):
        result, out = _verdict(capsys, ex.check_00_sign_bugs, wrong)
        assert result is False and hint in out, (wrong, out)
        assert "{'a', 'b'}" not in out and "a and b" not in out, out


def test_parameter_count_is_the_course_model_s(real_model):
    """The exercise's count is the real SmolLM2-135M-Instruct's (tied embeddings counted once)."""
    model, _ = real_model
    assert sum(parameter.numel() for parameter in model.parameters()) == ex.SMOLLM2_PARAMETERS
