"""Sampling, pairing and held-out evaluation, on a tiny random Llama with the real tokenizer."""
import json
import math

import pytest
import torch

from dpo_edu.evaluate import completion_logps, evaluate_policy, log_ratios, mean_and_se, win_rate
from dpo_edu.data import write_jsonl
from dpo_edu.generation import Samples, make_pairs, sample_completions
from dpo_edu.logprobs import sequence_logprobs_plain

PROMPTS = ["Bring tissues to Velvet Summer, because", "The best thing I can say about Iron Tide is that", "Let me be honest:"]


@pytest.fixture(scope="module")
def model(tiny_model):
    """tests/conftest.py's tiny Llama (seed 0), in eval mode, shared by this module's tests."""
    return tiny_model().eval()


def test_sampling_is_seeded_ordered_by_prompt_and_stops_at_eos(model, tokenizer):
    first = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=1)
    again = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=1)
    other = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=4, seed=2)
    assert first.completion_ids == again.completion_ids and first.completion_ids != other.completion_ids
    assert len(first.texts) == 9 and first.prompts[4 // first.per_prompt] == PROMPTS[1]  # sample i answers prompt i // per_prompt
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
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=6, seed=3, precision="fp32")
    logps = completion_logps(model, samples, batch_size=4, precision="fp32")  # `expected` is float32
    for i in range(len(samples.texts)):  # one sequence at a time, no padding: the plain textbook computation
        ids = torch.tensor([samples.prompt_ids[i] + samples.completion_ids[i]])
        labels = ids.clone()
        labels[0, : len(samples.prompt_ids[i])] = -100
        with torch.no_grad():
            expected = sequence_logprobs_plain(model(input_ids=ids).logits, labels)
        assert logps[i].item() == pytest.approx(expected.item(), abs=1e-4)


def test_interrupted_sampling_and_scoring_leave_the_model_in_its_own_mode(model, tokenizer):
    """Ctrl-C in the middle of sampling or scoring used to leave a model that was training in eval mode."""
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=1, max_new_tokens=2, seed=3, precision="fp32")
    handle = model.register_forward_pre_hook(lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    model.train()
    try:
        with pytest.raises(KeyboardInterrupt):
            sample_completions(model, tokenizer, PROMPTS, max_new_tokens=2, precision="fp32")
        assert model.training
        with pytest.raises(KeyboardInterrupt):
            completion_logps(model, samples, precision="fp32")
        assert model.training
    finally:
        handle.remove()
        model.eval()  # the module's fixture is in eval mode


def test_evaluation_of_the_reference_against_itself(model, tokenizer):
    reference_rewards = [0.0, 0.5, -0.5]
    same = evaluate_policy(model, model, tokenizer, PROMPTS, reference_rewards, max_new_tokens=6, seed=4,
                           precision="fp32")
    # the policy's log-probs are the sampler's (one token at a time, over a KV cache), the reference's a full forward
    # pass: the same model gives the same numbers up to float32 rounding
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    skipped = evaluate_policy(model, None, tokenizer, PROMPTS, reference_rewards, max_new_tokens=6, seed=4,
                              precision="fp32")
    assert skipped["kl"] == 0.0 and skipped["rewards"] == same["rewards"]
    assert same["reward_gain"] == pytest.approx(same["reward_mean"] - 0.0)
    assert 0.0 <= same["win_rate"] <= 1.0 and len(same["samples"]) == 3
    assert len(same["lengths"]) == 3 and all(1 <= n <= 6 for n in same["lengths"])  # tokens generated, EOS included
    with pytest.raises(ValueError, match="2 reference rewards for 3 prompts"):
        evaluate_policy(model, None, tokenizer, PROMPTS, [0.0, 0.0])


class ForwardCounter:
    """Counts the forward passes of a model (a hook on its outermost module)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()


def test_the_sampler_keeps_each_completions_log_prob(model, tokenizer):
    """Samples.logps is log pi(y|x) from the logits each token was drawn from: what scoring the samples gives."""
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=3, max_new_tokens=7, batch_size=4, seed=5,
                                 precision="fp32")
    scored = completion_logps(model, samples, precision="fp32")  # float32 on both sides
    assert len(samples.logps) == 9 and all(logp < 0 for logp in samples.logps)
    assert torch.allclose(torch.tensor(samples.logps, dtype=torch.float64), scored.double(), atol=1e-4)


def test_the_kl_runs_only_the_reference_over_the_policys_samples(model, tokenizer):
    """The policy's log-probs come from its sampler: a KL estimate costs one scoring pass (the reference's), not two."""
    import copy

    reference = copy.deepcopy(model)
    with torch.no_grad():
        next(reference.parameters()).add_(0.01)  # another model, so the KL is not 0
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=5, seed=6, precision="fp32")
    with ForwardCounter(model) as policy_calls, ForwardCounter(reference) as reference_calls:
        ratios = log_ratios(model, reference, tokenizer, samples, precision="fp32")
    assert policy_calls.calls == 0 and reference_calls.calls > 0
    rescored = completion_logps(model, samples, precision="fp32") - completion_logps(reference, samples, precision="fp32")
    assert torch.allclose(torch.tensor(ratios, dtype=torch.float64), rescored.double(), atol=1e-4)
    assert max(abs(r) for r in ratios) > 1e-3  # the check above compared two different models


def test_step_zero_is_the_reference_and_samples_nothing_again(model, tokenizer):
    """At step 0 the policy is the reference: the evaluator reuses the reference's samples drawn at construction."""
    from dpo_edu.evaluate import RewardEvaluator

    def reward(prompts, completions, **kwargs):
        return [float(len(text)) for text in completions]

    evaluator = RewardEvaluator(model, tokenizer, PROMPTS, reward, max_new_tokens=5, batch_size=8, seed=0,
                                precision="fp32", reference=model)
    with ForwardCounter(model) as calls:
        row = evaluator(model, 0, policy_is_reference=True)
    assert calls.calls == 0
    mean, se = mean_and_se(evaluator.reference_rewards)
    assert row == {"eval/reward_mean": mean, "eval/reward_se": se, "eval/reward_gain": 0.0, "eval/reward_gain_se": 0.0,
                   "eval/win_rate": 0.5, "eval/kl": 0.0, "eval/kl_se": 0.0}
    assert evaluator.results[0]["samples"] == evaluator.reference_texts


def test_the_evaluators_reference_answers_are_the_held_out_baseline_and_measuring_keeps_nothing(model, tokenizer):
    """One place draws the reference's answers: RewardEvaluator's are `heldout_baseline`'s at seed + 1, and
    `measure` (what the frontier calls) returns a whole result without adding to `results`."""
    from dpo_edu.evaluate import RewardEvaluator, heldout_baseline

    def reward(prompts, completions, **kwargs):
        return [float(len(text)) for text in completions]

    sizes = dict(max_new_tokens=5, batch_size=8)
    evaluator = RewardEvaluator(model, tokenizer, PROMPTS, reward, seed=3, precision="fp32", reference=model, **sizes)
    baseline = heldout_baseline(model, tokenizer, PROMPTS, seed=4, reward=reward, precision="fp32", **sizes)
    assert (evaluator.reference_texts, evaluator.reference_rewards, evaluator.reference_lengths) == (
        baseline["texts"], baseline["rewards"], baseline["lengths"])
    result = evaluator.measure(model)
    assert evaluator.results == [] and len(result["rewards"]) == len(PROMPTS)
    assert result["kl"] == pytest.approx(0, abs=1e-5)  # the policy is the reference
    evaluator(model, 2)
    assert evaluator.results == [{"step": 2, **result}]  # the same seeds: the same samples


def test_a_negative_kl_estimate_is_printed_with_its_se_and_why():
    from dpo_edu.evaluate import format_kl

    assert format_kl(7.4213, 0.2391) == "KL 7.42 ± 0.24 nats"
    negative = format_kl(-0.1, 0.12)
    assert negative.startswith("KL -0.10 ± 0.12 nats (a Monte-Carlo estimate") and "true KL is >= 0" in negative
    assert format_kl(0.0, float("nan")) == "KL 0.00 nats"


# --- the sampler's distribution and mechanics, on a 12-token model with a stand-in tokenizer ---

EOS, VOCAB = 0, 12


class DigitTokenizer:
    """A stand-in tokenizer for a 12-token model: the text "3 5 7" is the ids [3, 5, 7]; id 0 is EOS."""

    eos_token_id = pad_token_id = EOS

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(token) for token in text.split()]}

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(str(i) for i in row if not (skip_special_tokens and i == EOS)) for row in rows]


@pytest.fixture(scope="module")
def digits():
    """(model, tokenizer): a random 12-token Llama whose next-token distributions are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # peaked distributions: a wrong temperature or a top-k cut shows
    return model, DigitTokenizer()


DIGIT_PROMPTS = ["7 1 4 9 2", "3 5"]  # two lengths, longest first, in one batch: the shorter prompt's cache slots are padding
DRAWS = 4000  # per prompt


@torch.no_grad()
def exact_two_token_probabilities(model, prompt_ids: list[int]) -> dict[tuple, float]:
    """P(completion) of every completion of at most 2 tokens: (EOS,) or (a, b), a != EOS; they sum to 1."""
    first = torch.softmax(model(torch.tensor([prompt_ids])).logits[0, -1].double(), -1)
    probs = {(EOS,): first[EOS].item()}
    for a in range(VOCAB):
        if a != EOS:
            second = torch.softmax(model(torch.tensor([prompt_ids + [a]])).logits[0, -1].double(), -1)
            probs.update({(a, b): (first[a] * second[b]).item() for b in range(VOCAB)})
    return probs


def chi_square_p_value(counts, probs: dict[tuple, float], n: int) -> float:
    """Pearson's goodness-of-fit p-value of `counts` (a Counter of completions) against `probs`.

    Completions expected fewer than 5 times are pooled into one bin, as the
    chi-square approximation asks. The p-value is the chi-square survival
    function: the regularised upper incomplete gamma Q(df / 2, statistic / 2).
    """
    assert sum(counts.values()) == n and set(counts) <= set(probs)
    statistic, bins, pooled_observed, pooled_expected = 0.0, 0, 0, 0.0
    for completion, p in probs.items():
        if n * p < 5:
            pooled_observed, pooled_expected = pooled_observed + counts[completion], pooled_expected + n * p
        else:
            statistic, bins = statistic + (counts[completion] - n * p) ** 2 / (n * p), bins + 1
    if pooled_expected > 0:
        statistic, bins = statistic + (pooled_observed - pooled_expected) ** 2 / pooled_expected, bins + 1
    df = torch.tensor((bins - 1) / 2, dtype=torch.float64)
    return torch.special.gammaincc(df, torch.tensor(statistic / 2, dtype=torch.float64)).item()


def counts_per_prompt(completions, per_prompt):
    from collections import Counter

    return [Counter(map(tuple, completions[i : i + per_prompt])) for i in range(0, len(completions), per_prompt)]


def ours(model, tokenizer, **options):
    """Our sampler's counts, in float32: the exact probabilities they are tested against are float32's."""
    samples = sample_completions(model, tokenizer, DIGIT_PROMPTS, per_prompt=DRAWS, max_new_tokens=2,
                                 batch_size=len(DIGIT_PROMPTS) * DRAWS, seed=0, precision="fp32", **options)
    return counts_per_prompt(samples.completion_ids, DRAWS)


def hugging_face_generate(model, **options):
    """DRAWS completions of each prompt by `model.generate` (plain sampling unless `options` say otherwise)."""
    from transformers import GenerationConfig

    counts = []
    for prompt in DIGIT_PROMPTS:
        ids = torch.tensor([DigitTokenizer()(prompt)["input_ids"]])
        config = GenerationConfig(**{"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 2,
                                     "eos_token_id": EOS, "pad_token_id": EOS, "num_return_sequences": DRAWS, **options})
        torch.manual_seed(1)
        rows = model.generate(ids, generation_config=config)[:, ids.shape[1] :].tolist()
        counts += counts_per_prompt([row[: row.index(EOS) + 1] if EOS in row else row for row in rows], DRAWS)
    return counts


SIGNIFICANCE = 1e-3  # fixed seeds: each p-value below is one deterministic number, not a flaky draw


def test_samples_follow_the_models_exact_distribution_as_generate_does(digits):
    model, tokenizer = digits
    probs = [exact_two_token_probabilities(model, tokenizer(prompt)["input_ids"]) for prompt in DIGIT_PROMPTS]
    assert all(sum(p.values()) == pytest.approx(1.0) for p in probs) and 0.3 < probs[0][(EOS,)] < 0.7  # both EOS and 2-token completions

    def p_values(counts):
        return [chi_square_p_value(c, p, DRAWS) for c, p in zip(counts, probs)]

    assert min(p_values(ours(model, tokenizer))) > SIGNIFICANCE
    assert min(p_values(hugging_face_generate(model))) > SIGNIFICANCE  # plain generate passes the same test
    # the test has the power to see a sampler that is slightly off: each of these fails it
    assert max(p_values(ours(model, tokenizer, temperature=0.7))) < SIGNIFICANCE
    assert max(p_values(ours(model, tokenizer, temperature=1.2))) < SIGNIFICANCE
    assert max(p_values(hugging_face_generate(model, top_k=8))) < SIGNIFICANCE
    assert max(p_values(hugging_face_generate(model, top_p=0.95))) < SIGNIFICANCE
    assert max(p_values(hugging_face_generate(model, temperature=0.9))) < SIGNIFICANCE


def forward_calls(model):
    """A list that records the (rows, tokens) shape of every forward call of `model`, and a function to stop recording."""
    shapes = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                             with_kwargs=True)
    return shapes, handle.remove


def test_each_prompt_is_run_once_per_batch_however_many_samples(digits):
    model, tokenizer = digits
    prompts = ["3 5", "4 4", "7 1 4 9 2"]
    shapes, stop = forward_calls(model)
    samples = sample_completions(model, tokenizer, prompts, per_prompt=4, max_new_tokens=3, batch_size=12, seed=0)
    stop()
    prefills = [shape for shape in shapes if shape[1] > 1]
    assert sorted(prefills) == [(1, 5), (2, 2)]  # one call per prompt length, each prompt once, no padding
    assert all(shape == (12, 1) for shape in shapes[len(prefills) :])  # then one token per row per step
    assert len(shapes) - len(prefills) <= 2  # the first token comes from the prefill
    assert samples.prompt_ids == [tokenizer(p)["input_ids"] for p in prompts for _ in range(4)]


def test_a_batch_does_not_depend_on_the_other_batches(digits):
    model, tokenizer = digits
    def sample(prompts):  # batches of 2 prompts x 3 samples, the shortest prompts first
        samples = sample_completions(model, tokenizer, prompts, per_prompt=3, max_new_tokens=6, batch_size=6, seed=5)
        return {prompt: samples.completion_ids[3 * i : 3 * i + 3] for i, prompt in enumerate(prompts)}

    alone = sample(["3 5", "7 1 4 9 2"])
    with_more = sample(["3 5", "2 2 2 2 2 2 2 2", "7 1 4 9 2", "6 6 6 6 6 6"])  # the two longer prompts make a second batch
    assert with_more["3 5"] == alone["3 5"] and with_more["7 1 4 9 2"] == alone["7 1 4 9 2"]
    another_first_batch = sample(["4 4", "2 2 2 2 2 2 2 2", "1 1 1 1 1", "6 6 6 6 6 6"])
    assert another_first_batch["2 2 2 2 2 2 2 2"] == with_more["2 2 2 2 2 2 2 2"]
    assert another_first_batch["6 6 6 6 6 6"] == with_more["6 6 6 6 6 6"]


def test_samples_come_back_in_prompt_order_whatever_the_prompt_lengths(digits):
    model, tokenizer = digits
    prompts = ["7 1 4 9 2", "3", "2 2 2 2 2 2 2 2", "3 5"]
    forward = sample_completions(model, tokenizer, prompts, per_prompt=2, max_new_tokens=5, batch_size=8, seed=6)
    backward = sample_completions(model, tokenizer, prompts[::-1], per_prompt=2, max_new_tokens=5, batch_size=8, seed=6)
    assert forward.prompts == prompts and [forward.prompts[i // forward.per_prompt] for i in range(0, 8, 2)] == prompts
    assert forward.prompt_ids == [tokenizer(p)["input_ids"] for p in prompts for _ in range(2)]
    # one batch, sorted by length either way: each prompt gets the same two samples, listed in the order asked for
    assert [forward.completion_ids[2 * i : 2 * i + 2] for i in range(4)] == [backward.completion_ids[2 * i : 2 * i + 2] for i in range(4)][::-1]
    assert forward.texts == [tokenizer.batch_decode([ids])[0] for ids in forward.completion_ids]


def test_completions_end_at_their_first_eos_and_sampling_stops_when_all_rows_have_one(digits):
    model, tokenizer = digits
    samples = sample_completions(model, tokenizer, DIGIT_PROMPTS, per_prompt=50, max_new_tokens=8, batch_size=100, seed=2)
    ended = [ids for ids in samples.completion_ids if ids[-1] == EOS]
    assert 0 < len(ended) < len(samples.completion_ids)  # some stopped early, some ran to max_new_tokens
    assert all(EOS not in ids[:-1] for ids in samples.completion_ids)
    assert all(len(ids) == 8 for ids in samples.completion_ids if ids[-1] != EOS)
    assert samples.texts[samples.completion_ids.index(ended[0])] == tokenizer.batch_decode([ended[0]])[0]

    force_eos = model.lm_head.register_forward_hook(lambda module, args, logits: logits.index_fill(-1, torch.tensor([1]), -1e4)
                                                    .index_fill(-1, torch.tensor(range(2, VOCAB)), -1e4))
    shapes, stop = forward_calls(model)
    try:
        samples = sample_completions(model, tokenizer, DIGIT_PROMPTS, per_prompt=3, max_new_tokens=8, batch_size=6, seed=2)
    finally:
        stop()
        force_eos.remove()
    assert samples.completion_ids == [[EOS]] * 6 and samples.texts == [""] * 6
    assert len(shapes) == 2  # the two prefills: every row sampled EOS first, so no decode step ran


def test_precision_is_checked_and_passed_on(model, tokenizer):
    with pytest.raises(ValueError, match="precision 'fp8' is not one of"):
        sample_completions(model, tokenizer, PROMPTS, max_new_tokens=2, precision="fp8")
    with pytest.raises(ValueError, match="precision 'fp8' is not one of"):
        evaluate_policy(model, model, tokenizer, PROMPTS, [0.0] * 3, max_new_tokens=2, precision="fp8")
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=4, seed=3, precision="fp32")
    in_bf16 = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=4, seed=3, precision="bf16")
    assert all(len(ids) == 4 for ids in in_bf16.completion_ids)  # 16-bit autocast samples too (with a dynamic cache)
    fp32 = completion_logps(model, samples, precision="fp32")
    bf16 = completion_logps(model, samples, precision="bf16")  # bf16 autocast (emulated on a CPU without it: slow, but a tiny model)
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.5)


@torch.no_grad()
def completion_logps_padded_as_before(model, samples, batch_size):
    """completion_logps as it was before it grouped prompts by length: right-padded batches, logits at every position."""
    from dpo_edu.logprobs import sequence_logprobs

    out = torch.zeros(len(samples.completion_ids))
    for start in range(0, len(out), batch_size):
        rows = range(start, min(start + batch_size, len(out)))
        sequences = [samples.prompt_ids[i] + samples.completion_ids[i] for i in rows]
        width = max(map(len, sequences))
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, i in enumerate(rows):
            n_prompt, n_all = len(samples.prompt_ids[i]), len(sequences[row])
            input_ids[row, :n_all] = torch.tensor(sequences[row])
            labels[row, n_prompt:n_all] = torch.tensor(samples.completion_ids[i])
            attention_mask[row, :n_all] = 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        out[start : start + len(sequences)] = sequence_logprobs(logits.float(), labels)
    return out


def test_completion_logps_equal_the_padded_computation_they_replace(model, tokenizer):
    prompts = PROMPTS + ["Honestly,", "Let me be blunt:", "The best thing I can say about Velvet Summer is that"]
    samples = sample_completions(model, tokenizer, prompts, per_prompt=3, max_new_tokens=7, seed=8, precision="fp32")
    assert len({len(ids) for ids in samples.prompt_ids}) >= 3  # several prompt lengths, some shared
    samples.completion_ids[4] = samples.completion_ids[4][:2]  # and completions of several lengths
    samples.completion_ids[9] = [tokenizer.eos_token_id]
    before = completion_logps_padded_as_before(model, samples, batch_size=5)
    for batch_size in (1, 4, 32):
        # within 1e-5, give or take the rounding of the float32 sums: about -75 here, where float32's spacing is 7.6e-6
        torch.testing.assert_close(completion_logps(model, samples, batch_size=batch_size, precision="fp32"), before,
                                   atol=1e-5, rtol=2 * 2**-23)


# float32 uses the static cache, 16-bit autocast the dynamic one; both are forced here, in float32 (`expected` is)
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_each_token_is_drawn_from_the_logits_of_its_prompt_and_the_tokens_before_it(model, tokenizer, monkeypatch, cache):
    import dpo_edu.generation as generation

    monkeypatch.setattr(generation, "_static_cache_fits", lambda device: cache == "static")

    drawn_from = []  # (rows, V) logits of each step, rows in the sampler's order: prompts by length, samples adjacent
    sample_token = generation._sample_token

    def recording(logits, *args):
        drawn_from.append(logits.float().clone())
        return sample_token(logits, *args)

    monkeypatch.setattr(generation, "_sample_token", recording)
    prompts = sorted(PROMPTS + ["Hi"], key=lambda p: len(tokenizer(p, add_special_tokens=False)["input_ids"]))
    samples = sample_completions(model, tokenizer, prompts, per_prompt=2, max_new_tokens=5, batch_size=8, seed=9,
                                 precision="fp32")
    assert len({len(ids) for ids in samples.prompt_ids}) == 4 and all(len(ids) == 5 for ids in samples.completion_ids)
    for row, (prompt_ids, completion_ids) in enumerate(zip(samples.prompt_ids, samples.completion_ids)):
        with torch.no_grad():  # the whole sequence at once, no cache, no padding
            logits = model(input_ids=torch.tensor([prompt_ids + completion_ids])).logits[0]
        expected = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(completion_ids)]
        assert torch.allclose(torch.stack([step[row] for step in drawn_from]), expected, atol=1e-5)
