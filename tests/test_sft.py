"""Preferred-FT (dpo_edu.sft) on tiny random Llamas with the real tokenizer."""
import pytest
import torch

from conftest import REVIEW_PAIRS
from dpo_edu.data import tokenize_pair
from dpo_edu.sft import SFTConfig, response_nll, sft_rows, train_sft

FP32 = dict(mixed_precision="fp32")


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ValueError, match=r"^invalid SFTConfig: warmup_steps must be >= 0, got -1; max_grad_norm must "
                                         r"be > 0, got 0$"):
        SFTConfig(warmup_steps=-1, max_grad_norm=0)
    with pytest.raises(ValueError, match="max_prompt_length must be below max_length, got 64 with max_length 32"):
        SFTConfig(max_length=32)


def test_the_loss_is_the_nll_per_response_token_as_transformers_computes_it(tokenizer, tinier_model):
    model = tinier_model().eval()
    rows = sft_rows(tokenizer, REVIEW_PAIRS[:3], SFTConfig(**FP32))
    assert rows[0] == tokenize_pair(tokenizer, "Review:", " Lovely, warm and funny.", max_length=128,
                                    max_prompt_length=64, use_chat_template=False)
    assert rows[0]["input_ids"][-1] == tokenizer.eos_token_id  # EOS is scored
    with torch.no_grad():
        nll, tokens = response_nll(model, rows, tokenizer.pad_token_id)
        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.tensor([row["input_ids"] + [0] * (width - len(row["input_ids"])) for row in rows])
        labels = torch.tensor([row["labels"] + [-100] * (width - len(row["labels"])) for row in rows])
        expected = model(input_ids=ids, attention_mask=(labels != -100) | (ids != 0), labels=labels).loss
    assert tokens == sum(label != -100 for row in rows for label in row["labels"])
    assert nll.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_few_steps_fit_the_chosen_replies_deterministically_and_keep_the_mode(tokenizer, tinier_model):
    config = SFTConfig(learning_rate=3e-2, batch_size=4, epochs=3, **FP32)
    runs = []
    for _ in range(2):
        model = tinier_model().eval()
        runs.append(train_sft(model, tokenizer, REVIEW_PAIRS, config, on_step=lambda r: {"eval/step": r["step"]}))
        assert not model.training
    first, again = runs
    assert [r["loss"] for r in first] == [r["loss"] for r in again] and len(first) == 6
    assert first[-1]["loss"] < first[0]["loss"] - 1
    assert [r["eval/step"] for r in first] == list(range(1, 7)) and first[0]["tokens"] > 0


def test_unusable_examples_are_skipped_in_one_line(tokenizer, tinier_model):
    lines = []
    long_prompt = {"prompt": "A prompt far too long to leave any room at all", "chosen": " Yes."}
    rows = sft_rows(tokenizer, [long_prompt, REVIEW_PAIRS[0]], SFTConfig(max_length=4, max_prompt_length=3),
                    log=lines.append)
    assert len(rows) == 2 and rows[0]["prompt_truncated"]  # a long prompt keeps its last tokens
    with pytest.raises(ValueError, match="none of the 1 examples can be trained on"):
        # "wor" + "ld" tokenise together as " world": the prompt's own tokens are no prefix of the pair's
        train_sft(tinier_model(), tokenizer, [{"prompt": "Hello wor", "chosen": "ld"}], SFTConfig(), log=lines.append)
    assert lines == ["Preferred-FT: skipped 1 of 1 examples that cannot be tokenised as DPO's pairs"]
