import random

import pytest
import torch

from dpo_edu.data import IGNORE_INDEX, collate_preferences, format_prompt, split_chosen_rejected, tokenize_pair, tokenize_preference


def varied_pairs(n=100, seed=0):
    """Prompts and responses that stress the seam: whitespace, punctuation, digits, accents, emoji, code, newlines."""
    rng = random.Random(seed)
    prompts = ["Review this film:", "Was it good?", "Résumé du film, s'il vous plaît.", "Rate 1-10 👉", "def f(x):", "  leading spaces?", "Ends with newline\n", "Tabs\tand\tmore", "中文提示", "Quote: \"great\""]
    starts = ["", " ", "  ", "\n", "\n\n", "\t", "- ", "1. ", "\"", "…"]
    bodies = ["The movie was great.", "it's 10/10!", "Terrible; I left at 0:42.", "🎬🍿 fun", "return x * 2", "Très bien.", "NO", "well... maybe", "¿Por qué?", "A\nB\nC"]
    return [(rng.choice(prompts), rng.choice(starts) + rng.choice(bodies)) for _ in range(n)]


def test_prompt_uses_the_chat_template(tokenizer):
    text = format_prompt(tokenizer, "Hello")
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHello<|im_end|>" in text
    assert format_prompt(tokenizer, "Hello", use_chat_template=False) == "Hello"


def test_seam_on_100_varied_pairs(tokenizer):
    """prompt+response ids are exactly the prompt's ids followed by the response's ids, for the real tokenizer."""
    for prompt, response in varied_pairs():
        pair = tokenize_pair(tokenizer, prompt, response)
        prompt_text = format_prompt(tokenizer, prompt)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response.lstrip(), add_special_tokens=False)["input_ids"]
        joint_ids = tokenizer(prompt_text + response.lstrip(), add_special_tokens=False)["input_ids"]
        assert pair["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id], (prompt, response)
        assert pair["input_ids"][:-1] == joint_ids, (prompt, response)
        assert pair["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]
        assert tokenizer.decode(pair["input_ids"][pair["prompt_length"] : -1]) == response.lstrip()


def test_seam_merge_is_refused_without_the_template(tokenizer):
    # a prompt ending in a space: " great" would take the space from the prompt
    with pytest.raises(ValueError, match="merge across the seam"):
        tokenize_pair(tokenizer, "The movie was ", "great", use_chat_template=False)
    pair = tokenize_pair(tokenizer, "The movie was", " great", use_chat_template=False)
    assert tokenizer.decode(pair["input_ids"][:-1]) == "The movie was great"


def test_truncation_keeps_prompt_end_then_cuts_response(tokenizer):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    full = tokenize_pair(tokenizer, long_prompt, "A fine response with several tokens in it.")
    pair = tokenize_pair(tokenizer, long_prompt, "A fine response with several tokens in it.", max_length=40, max_prompt_length=30)
    assert pair["prompt_length"] == 30
    assert pair["input_ids"][:30] == full["input_ids"][full["prompt_length"] - 30 : full["prompt_length"]]  # the end of the prompt
    assert len(pair["input_ids"]) == 40
    assert pair["input_ids"][30:] == full["input_ids"][full["prompt_length"] : full["prompt_length"] + 10]  # the start of the response
    assert pair["labels"][:30] == [IGNORE_INDEX] * 30 and IGNORE_INDEX not in pair["labels"][30:]
    short = tokenize_pair(tokenizer, "Hi", "Yes.", max_length=1000, max_prompt_length=1000)
    assert short["input_ids"][-1] == tokenizer.eos_token_id  # nothing cut: EOS kept


def test_truncation_without_room_for_a_response_is_named(tokenizer):
    with pytest.raises(ValueError, match="leaves no room for a response"):
        tokenize_pair(tokenizer, "A prompt of several tokens, surely more than five.", "Yes", max_length=5)


def test_collation_puts_chosen_first_and_pads(tokenizer):
    examples = [
        {"prompt": "Was it good?", "chosen": "Yes, very.", "rejected": "No."},
        {"prompt": "Describe the plot.", "chosen": "A heist goes wrong in a small town, and nobody is who they seem.", "rejected": "Stuff happens."},
    ]
    features = [tokenize_preference(tokenizer, example) for example in examples]
    batch = collate_preferences(features, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4
    for row, feature in enumerate([f["chosen"] for f in features] + [f["rejected"] for f in features]):
        length = len(feature["input_ids"])
        assert batch["input_ids"][row, :length].tolist() == feature["input_ids"]
        assert batch["attention_mask"][row].sum().item() == length
        assert torch.all(batch["labels"][row, length:] == IGNORE_INDEX)
    chosen, rejected = split_chosen_rejected(batch["input_ids"])
    assert chosen.shape[0] == rejected.shape[0] == 2
    assert tokenizer.decode(chosen[1][batch["attention_mask"][1].bool()]).endswith("nobody is who they seem.<|im_end|>")
    with pytest.raises(ValueError, match="empty batch"):
        collate_preferences([], 0)
