"""`load_preferences` on every kind of bad file: a clear error naming file, line and field, or a counted skip."""
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_edu.data import PreferenceFileError, load_preferences

GOOD = {"prompt": "The film", "chosen": " was lovely.", "rejected": " was dull."}
SCORED = {**GOOD, "chosen_score": 0.8, "rejected_score": -0.3}


def write(tmp_path, lines, name="prefs.jsonl", encoding="utf-8", newline="\n"):
    path = tmp_path / name
    text = newline.join(line if isinstance(line, str) else json.dumps(line) for line in lines) + newline
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "bad_line, pattern",
    [
        ('{"prompt": "a", "chosen": "b", ', r"line 2: not valid JSON"),
        ('["a", "b", "c"]', r"line 2: expected a JSON object"),
        ({"prompt": "a", "chosen": "b"}, r"line 2, field 'rejected': missing"),
        ({**GOOD, "chosen": 3}, r"line 2, field 'chosen': expected a string, got int"),
        ({**GOOD, "prompt": None}, r"line 2, field 'prompt': expected a string, got NoneType"),
        ({**GOOD, "chosen_score": "high", "rejected_score": 0.1}, r"line 2, field 'chosen_score': expected a number, got str"),
        ({**GOOD, "chosen_score": True, "rejected_score": 0.1}, r"line 2, field 'chosen_score': expected a number, got bool"),
        ({**GOOD, "chosen_score": 0.5}, r"line 2, field 'rejected_score': missing while the other score is given"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": NaN, "rejected_score": 0}', r"line 2, field 'chosen_score': expected a finite number, got nan"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": 1, "rejected_score": -Infinity}', r"line 2, field 'rejected_score': expected a finite number"),
        ({**GOOD, "chosen_score": -0.5, "rejected_score": 0.5}, r"line 2, field 'chosen_score': -0.5 is below rejected_score 0.5"),
    ],
)
def test_a_bad_row_raises_naming_file_line_and_field(tmp_path, bad_line, pattern):
    path = write(tmp_path, [GOOD, bad_line, GOOD])
    with pytest.raises(PreferenceFileError, match=pattern) as error:
        load_preferences(path)
    assert str(error.value).startswith(str(path))
    assert isinstance(error.value, ValueError)  # callers may catch ValueError


def test_odpo_requires_scores_on_every_row(tmp_path):
    path = write(tmp_path, [SCORED, GOOD])
    assert len(load_preferences(path)) == 2
    with pytest.raises(PreferenceFileError, match=r"line 2, field 'chosen_score': missing; ODPO needs"):
        load_preferences(path, require_scores=True)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'.encode("latin-1") + b"\n")
    with pytest.raises(PreferenceFileError, match=r"latin1.jsonl, line 2: not UTF-8 .*save the file as UTF-8"):
        load_preferences(path)


def test_a_huge_line_is_refused_with_its_size(tmp_path):
    path = write(tmp_path, [GOOD, {**GOOD, "chosen": "x" * 2_000}])
    with pytest.raises(PreferenceFileError, match=r"line 2: the line is 2,0\d\d bytes, over the limit of 1,000"):
        load_preferences(path, max_line_bytes=1_000)


def test_bom_crlf_blank_lines_and_extra_fields_are_fine(tmp_path):
    path = write(tmp_path, ["\ufeff" + json.dumps({**GOOD, "id": 7, "source": "mine"}), "", "   ", SCORED], newline="\r\n")
    rows = load_preferences(path, log=None)
    assert rows == [GOOD, SCORED]  # extra fields dropped, CR stripped, BOM gone


def test_rows_that_teach_nothing_are_skipped_and_counted_in_one_line(tmp_path):
    lines = [
        GOOD,
        {**GOOD, "chosen": GOOD["rejected"]},  # identical pair
        {**GOOD, "chosen": GOOD["rejected"]},
        {**GOOD, "rejected": "  "},  # empty response
        {**GOOD, "prompt": ""},  # empty prompt
        {**GOOD, "chosen_score": 0.2, "rejected_score": 0.2},  # tied scores
        "",
        SCORED,
    ]
    messages = []
    rows = load_preferences(write(tmp_path, lines), log=messages.append)
    assert rows == [GOOD, SCORED]
    assert messages == [
        "prefs.jsonl: skipped 5 of 7 rows: 2 identical pair (lines 2, 3), 1 empty response (line 4), 1 empty prompt (line 5), "
        "1 tied scores (line 6); 1 blank line (line 7)"
    ]


def test_skipped_lines_are_listed_up_to_five_per_reason(tmp_path):
    same = {**GOOD, "chosen": GOOD["rejected"]}
    lines = [GOOD] + [same] * 1_200 + ["", "", GOOD]
    messages = []
    load_preferences(write(tmp_path, lines), log=messages.append)
    assert messages == ["prefs.jsonl: skipped 1,200 of 1,202 rows: 1,200 identical pair (lines 2, 3, 4, 5, 6, …); 2 blank lines (lines 1202, 1203)"]


def test_a_folder_is_refused_in_one_line(tmp_path):
    with pytest.raises(PreferenceFileError, match=rf"^{re.escape(str(tmp_path))}: is a folder; pass a .jsonl file, not a folder$"):
        load_preferences(tmp_path)


def test_a_missing_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(path))}: no such file; pass the path of a .jsonl file of preference pairs$"):
        load_preferences(path)


def test_a_file_with_nothing_usable_is_an_error(tmp_path):
    with pytest.raises(PreferenceFileError, match=r"no usable preference pair \(skipped 1 of 1 rows: 1 identical pair \(line 1\)\)"):
        load_preferences(write(tmp_path, [{**GOOD, "chosen": GOOD["rejected"]}]))
    with pytest.raises(PreferenceFileError, match=r"no usable preference pair"):
        load_preferences(write(tmp_path, [""], name="empty.jsonl"))


texts = st.text(max_size=30)
values = st.one_of(texts, st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
rows = st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "extra"]), values, max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(rows, st.text(max_size=20)), min_size=1, max_size=6))
def test_any_file_gives_rows_or_a_named_error_never_a_bare_exception(tmp_path, generated):
    lines = [json.dumps(row) if isinstance(row, dict) else row.replace("\n", " ").replace("\r", " ") for row in generated]
    path = tmp_path / "generated.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        kept = load_preferences(path, log=None)
    except PreferenceFileError as error:
        assert str(error).startswith(str(path))
        return
    for row in kept:  # every kept row is usable as it claims
        assert all(isinstance(row[f], str) for f in ("prompt", "chosen", "rejected"))
        assert row["prompt"].strip() and row["chosen"].strip() and row["rejected"].strip() and row["chosen"] != row["rejected"]
        if "chosen_score" in row:
            assert math.isfinite(row["chosen_score"]) and row["chosen_score"] > row["rejected_score"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(texts.filter(str.strip), texts.filter(str.strip), texts.filter(str.strip)), min_size=1, max_size=5))
def test_valid_rows_round_trip(tmp_path, triples):
    wanted = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples if c != r]
    path = tmp_path / "valid.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in triples), encoding="utf-8")
    if not wanted:
        with pytest.raises(PreferenceFileError):
            load_preferences(path, log=None)
    else:
        assert load_preferences(path, log=None) == wanted


@pytest.mark.parametrize("text", ['[{"prompt": "a", "chosen": "b", "rejected": "c"}]', '[\n  {"prompt": "a", "chosen": "b", "rejected": "c"}\n]'])
def test_a_json_array_says_one_object_per_line_is_expected(tmp_path, text):
    path = tmp_path / "pairs.json"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(PreferenceFileError, match=r"pairs.json, line 1: .*one JSON array, but a pairs file is JSON Lines: "
                                                  r"one \{\"prompt\", \"chosen\", \"rejected\"\} object per line") as error:
        load_preferences(path)
    assert "\n" not in str(error.value)
