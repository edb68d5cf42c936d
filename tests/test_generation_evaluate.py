"""Sampling, pairing and held-out evaluation, on a tiny random Llama with the real tokenizer."""
import json
import math

import pytest
import torch

from dpo_edu.evaluate import completion_logps, evaluate_policy, mean_and_se, win_rate
from dpo_edu.generation import Samples, make_pairs, sample_completions, write_jsonl
from dpo_edu.logprobs import sequence_logprobs_plain

PROMPTS = ["Bring tissues to Velvet Summer, because", "The best thing I can say about Iron Tide is that", "Let me be honest:"]


@pytest.fixture(scope="module")
def tokenizer():
    from dpo_edu.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_sampling_is_seeded_ordered_by_prompt_and_stops_at_eos(model, tokenizer):
    first = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=1)
    again = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=1)
    other = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=2)
    assert first.completion_ids == again.completion_ids and first.completion_ids != other.completion_ids
    assert len(first.texts) == 9 and first.prompt_of(4) == PROMPTS[1]
    assert first.prompt_ids[4] == tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    for ids in first.completion_ids:
        assert 1 <= len(ids) <= 8
        assert tokenizer.eos_token_id not in ids[:-1]  # cut at the first EOS, which is kept
    with pytest.raises(ValueError, match="per_prompt"):
        sample_completions(model, tokenizer, PROMPTS, per_prompt=0)


def samples_of(texts, per_prompt):
    prompts = [f"prompt {i}" for i in range(len(texts) // per_prompt)]
    return Samples(prompts, per_prompt, [[1]] * len(texts), [[2]] * len(texts), texts)


def test_pairs_best_vs_worst_and_all_drop_small_gaps_and_empty_text():
    samples = samples_of(["a", "b", "c", "d", "e", "f", " ", "h"], per_prompt=4)
    scores = [0.5, -0.2, 0.0, 0.9, 0.1, 0.1, 0.8, 0.15]
    pairs, counts = make_pairs(samples, scores, rule="best_vs_worst", min_gap=0.1)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("d", "b")]  # prompt 1: best 0.15 vs worst 0.1 is a near-tie
    assert counts == {"prompts": 2, "pairs": 1, "small_gap": 1, "unusable_text": 1}
    assert pairs[0]["chosen_score"] == 0.9 and pairs[0]["rejected_score"] == -0.2 and pairs[0]["prompt"] == "prompt 0"
    pairs, counts = make_pairs(samples, scores, rule="all", min_gap=0.1)
    assert len(pairs) == 6 and counts["small_gap"] == 3  # prompt 0: all 6 pairs differ by >= 0.1; prompt 1: none
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.1 for p in pairs)
    with pytest.raises(ValueError, match="allowed: best_vs_worst, all"):
        make_pairs(samples, scores, rule="random")


def test_pairs_drop_completions_that_do_not_retokenise(tokenizer):
    samples = Samples(["Review:"], 2, [[1]] * 2, [[2]] * 2, [" a fine film", "\n\n\nflat"])
    merging = Samples(["It was"], 2, [[1]] * 2, [[2]] * 2, ["n't good", " fine, easily"])
    _, counts = make_pairs(merging, [0.0, 0.5], tokenizer=tokenizer, min_gap=0.1)
    assert counts["unusable_text"] == 1  # "was" and "n't" merge across the seam: the prompt's ids change
    pairs, counts = make_pairs(samples, [0.2, -0.3], tokenizer=tokenizer)
    assert counts["unusable_text"] == 0 and len(pairs) == 1


def test_write_jsonl_round_trips_and_leaves_no_temporary_file(tmp_path):
    rows = [{"prompt": "é", "chosen": "a\nb", "rejected": "c", "chosen_score": 0.5, "rejected_score": -0.5}]
    path = write_jsonl(rows, tmp_path / "sub" / "pairs.jsonl")
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]


def test_mean_se_and_win_rate():
    mean, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3 / 4))
    assert math.isnan(mean_and_se([1.0])[1])
    assert win_rate([1.0, 0.0, 0.5], [0.0, 0.0, 0.9]) == pytest.approx(0.5)  # win, tie (1/2), loss
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [])


def test_completion_logps_are_the_sampled_tokens_log_probs(model, tokenizer):
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=6, seed=3)
    logps = completion_logps(model, samples, batch_size=4)
    for i in range(len(samples.texts)):  # one sequence at a time, no padding: the plain textbook computation
        ids = torch.tensor([samples.prompt_ids[i] + samples.completion_ids[i]])
        labels = ids.clone()
        labels[0, : len(samples.prompt_ids[i])] = -100
        with torch.no_grad():
            expected = sequence_logprobs_plain(model(input_ids=ids).logits, labels)
        assert logps[i].item() == pytest.approx(expected.item(), abs=1e-4)


def test_evaluation_of_the_reference_against_itself(model, tokenizer):
    reference_rewards = [0.0, 0.5, -0.5]
    same = evaluate_policy(model, model, tokenizer, PROMPTS, reference_rewards, max_new_tokens=6, seed=4)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)  # the same model scores its own samples
    skipped = evaluate_policy(model, None, tokenizer, PROMPTS, reference_rewards, max_new_tokens=6, seed=4)
    assert skipped["kl"] == 0.0 and skipped["rewards"] == same["rewards"]
    assert same["reward_gain"] == pytest.approx(same["reward_mean"] - 0.0)
    assert 0.0 <= same["win_rate"] <= 1.0 and len(same["samples"]) == 3
    with pytest.raises(ValueError, match="2 reference rewards for 3 prompts"):
        evaluate_policy(model, None, tokenizer, PROMPTS, [0.0, 0.0])


def test_a_negative_kl_estimate_is_printed_with_its_se_and_why():
    from dpo_edu.evaluate import format_kl

    assert format_kl(7.4213, 0.2391) == "KL 7.42 ± 0.24 nats"
    negative = format_kl(-0.1, 0.12)
    assert negative.startswith("KL -0.10 ± 0.12 nats (a Monte-Carlo estimate") and "true KL is >= 0" in negative
    assert format_kl(0.0, float("nan")) == "KL 0.00 nats"
