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
    from importlib import util

    spec = util.spec_from_file_location("make_prompts", DATA / "make_prompts.py")
    make_prompts = util.module_from_spec(spec)
    spec.loader.exec_module(make_prompts)
    titles = {f"{a} {n}" for a in make_prompts.ADJECTIVES for n in make_prompts.NOUNS}
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
