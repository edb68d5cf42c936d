import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_edu.rewards import sentiment_reward, sentiment_rewards

DATA = Path(__file__).resolve().parents[1] / "data"


def test_sentiment_reward_orders_text_by_sentiment():
    positive = sentiment_reward("A wonderful, moving film; I loved every minute.")
    neutral = sentiment_reward("The film runs for two hours.")
    negative = sentiment_reward("A dull, lifeless mess. I hated it.")
    assert positive > 0.5 and negative < -0.5 and neutral == 0.0
    assert sentiment_rewards(["", "great"]) == [0.0, sentiment_reward("great")]
    with pytest.raises(TypeError, match="takes a str"):
        sentiment_reward(None)


def read(name):
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_prompt_files_are_large_varied_and_split_by_title():
    train, heldout = read("prompts_train.jsonl"), read("prompts_heldout.jsonl")
    assert len(train) >= 600 and len(heldout) >= 200
    prompts = [row["prompt"] for row in train + heldout]
    assert len(set(prompts)) == len(prompts), "duplicate openings"
    for tone in ("positive", "negative", "neutral", "mixed", "undecided"):
        assert sum(row["tone"] == tone for row in heldout) >= 40
    # titles are two capitalised words from the generator's lists; none is shared between the splits
    from dpo_edu.prompts import ADJECTIVES, NOUNS

    titles = {f"{a} {n}" for a in ADJECTIVES for n in NOUNS}
    def titles_in(rows):
        return {title for row in rows for title in titles if re.search(rf"\b{title}\b", row["prompt"])}
    assert titles_in(train) and titles_in(heldout) and not titles_in(train) & titles_in(heldout)


def test_prompt_files_are_what_the_script_makes(tmp_path):
    """The committed files are reproducible from the committed script, byte for byte."""
    script = tmp_path / "make_prompts.py"
    script.write_text((DATA / "make_prompts.py").read_text())
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    for name in ("prompts_train.jsonl", "prompts_heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_load_prompts_reads_the_files_or_makes_the_same_rows(tmp_path, monkeypatch):
    from dpo_edu import prompts

    for split in prompts.SPLITS:
        from_file = prompts.load_prompts(split)
        assert from_file == [row["prompt"] for row in read(f"prompts_{split}.jsonl")]
        monkeypatch.setattr(prompts, "repo_data_dir", lambda: None)  # as on Colab: no data/ folder
        assert prompts.load_prompts(split) == from_file
        monkeypatch.undo()
    with pytest.raises(ValueError, match="allowed: train, heldout"):
        prompts.load_prompts("test")


def test_load_prompts_names_the_file_and_line_of_a_bad_row(tmp_path):
    from dpo_edu.prompts import load_prompts

    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "fine"}\n\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"mine.jsonl, line 3, field 'prompt'"):
        load_prompts(path=path)
    path.write_text('\ufeff{"prompt": "a"}\r\n{"prompt": "b"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        load_prompts(path=path)
    path.write_text('\ufeff{"prompt": "a"}\r\n{"prompt": "b"}\r\n', encoding="utf-8")
    assert load_prompts(path=path) == ["a", "b"]  # a byte-order mark and CRLF line ends are fine


def test_a_json_prompts_file_is_read_as_json_lines_or_as_one_array(tmp_path):
    """A JSONL file named .json was once read as text: every prompt a raw JSON line."""
    from dpo_edu.prompts import read_prompts

    chat = [{"role": "user", "content": "hi"}]
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps({"prompt": "first"}) + "\n\n" + json.dumps({"prompt": chat}) + "\n", encoding="utf-8")
    assert read_prompts(lines) == ["first", chat]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"prompt": "first"}, "second", {"prompt": chat}], indent=2), encoding="utf-8")
    assert read_prompts(array) == ["first", "second", chat]
    array.write_text(json.dumps([{"prompt": "first"}, {"text": "no prompt"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"array.json, item 2, field 'prompt': expected a non-empty string"):
        read_prompts(array)
    lines.write_text('{"prompt": "first"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"lines.json, line 2: not valid JSON .*one \{\"prompt\": ...\} object per line"):
        read_prompts(lines)
    text = tmp_path / "plain.txt"
    text.write_text('{"prompt": "a JSON line in a .txt file is a prompt like any other"}\n', encoding="utf-8")
    assert read_prompts(text) == ['{"prompt": "a JSON line in a .txt file is a prompt like any other"}']


@pytest.mark.parametrize("body, message", [
    ("import sys\nsys.exit(3)\n", r"importing .*my_reward.py called sys.exit\(3\); .*if __name__ == \"__main__\""),
    ("def helper():\n    raise KeyError('api_key')\nhelper()\n", r"importing .*my_reward.py failed at .*my_reward.py, line 2: KeyError"),
])
def test_a_reward_module_that_exits_or_fails_at_import_is_one_line(tmp_path, body, message):
    from dpo_edu.rewards import load_reward

    path = tmp_path / "my_reward.py"
    path.write_text(body + "\ndef reward(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    with pytest.raises(ValueError, match=message) as error:
        load_reward(f"{path}:reward")
    assert "\n" not in str(error.value)


def test_a_reward_that_raises_is_named_with_its_file_and_line(tmp_path):
    from dpo_edu.rewards import RewardError, checked_rewards, load_reward

    path = tmp_path / "server_reward.py"
    path.write_text("def reward(prompts, completions, **kwargs):\n    raise RuntimeError('my reward server is down')\n")
    with pytest.raises(RewardError, match=rf"reward function reward \({path}, line 1\) raised RuntimeError at {path}, "
                                          r"line 2: my reward server is down$"):
        checked_rewards(load_reward(f"{path}:reward"), ["p"], ["c"])

    def exits(prompts, completions, **kwargs):
        raise SystemExit(4)

    with pytest.raises(RewardError, match=r"raised SystemExit"):
        checked_rewards(exits, ["p"], ["c"])
