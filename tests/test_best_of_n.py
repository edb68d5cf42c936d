"""Best-of-N (dpo_edu.best_of_n): the exact policy and KL on the bandit, the usual KL formula as its upper bound,
nested selection, and sampling on a tiny random Llama."""
import math

import pytest
import torch

from dpo_edu.best_of_n import best_of_n, check_ns, exact_kl, exact_policy, kl_bound, picks, sample_best_of_n


def test_the_usual_formula_by_hand_and_bad_n_in_one_line():
    assert kl_bound(1) == 0.0
    assert kl_bound(4) == pytest.approx(math.log(4) - 3 / 4)
    for bad in ([0], [1, 2, -4], [2.0], [True], []):
        with pytest.raises(ValueError, match=r"^best-of-N: every N must be an int >= 1") as error:
            check_ns(bad)
        assert "\n" not in str(error.value)
    assert check_ns([4, 1, 2, 4]) == [1, 2, 4]


def test_exact_kl_never_exceeds_the_formula_on_random_bandits():
    generator = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 12, generator=generator, dtype=torch.float64) ** 3
    ref /= ref.sum(-1, keepdim=True)
    rewards = torch.randn(50, 12, generator=generator, dtype=torch.float64)
    for n in (1, 2, 4, 16, 64):
        policy = exact_policy(ref, rewards, n)
        assert torch.allclose(policy.sum(-1), torch.ones(50, dtype=torch.float64))
        assert (exact_kl(ref, rewards, n) <= kl_bound(n) + 1e-12).all()
    assert torch.allclose(exact_policy(ref, rewards, 1), ref)  # best of one draw is a draw
    # half the mass on the best response: best-of-16 is that response with probability 1 - 2^-16, a KL of about
    # log(1 / 0.5), far below the formula's 1.84 nats
    top_heavy, distinct = torch.tensor([0.05] * 10 + [0.5], dtype=torch.float64), torch.arange(11.0)
    assert exact_kl(top_heavy, distinct, 16).item() == pytest.approx(math.log(2), abs=1e-3)


def test_the_formula_is_approached_with_many_distinct_rewards_of_small_mass():
    k = 1000
    ref, rewards = torch.full((k,), 1 / k, dtype=torch.float64), torch.arange(k, dtype=torch.float64)
    for n in (2, 16):
        assert exact_kl(ref, rewards, n).item() == pytest.approx(kl_bound(n), abs=1e-4)
    tied = rewards // 250  # 4 reward levels of 250 responses each: the best level alone holds a quarter of the mass
    assert exact_kl(ref, tied, 16).item() < kl_bound(16) - 0.4


def test_the_exact_policy_is_what_selection_from_draws_gives_ties_included():
    generator = torch.Generator().manual_seed(1)
    ref = torch.tensor([0.05, 0.15, 0.10, 0.30, 0.25, 0.15], dtype=torch.float64)
    rewards = torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    n, draws = 4, 100_000
    samples = torch.multinomial(ref.float(), draws * n, replacement=True, generator=generator).view(draws, n)
    chosen = samples[torch.arange(draws), picks(rewards[samples], n)]
    frequencies = torch.bincount(chosen, minlength=6).double() / draws
    assert torch.allclose(frequencies, exact_policy(ref, rewards, n), atol=0.006)  # binomial SE <= 0.0016


def test_selection_is_nested_over_prefixes_and_scored_by_the_truth():
    selection = [0.1, 0.9, 0.5, 0.7,   0.3, 0.2, 0.8, 0.8]  # two prompts, 4 samples each
    truth = [1.0, 2.0, 3.0, 4.0,   5.0, 6.0, 7.0, 8.0]
    results = best_of_n(selection, truth, per_prompt=4, ns=[4, 1, 2])
    assert [r["n"] for r in results] == [1, 2, 4]
    assert [r["picked"] for r in results] == [[0, 4], [1, 4], [1, 6]]  # n=4, prompt 2: a tie goes to the earlier
    assert [r["rewards"] for r in results] == [[1.0, 5.0], [2.0, 5.0], [2.0, 7.0]]
    assert results[0]["reward_gain"] == 0 and results[2]["reward_gain"] == pytest.approx(1.5)
    assert results[2]["selected_mean"] == pytest.approx((0.9 + 0.8) / 2)
    assert results[1]["kl_bound"] == kl_bound(2)
    with pytest.raises(ValueError, match="best-of-8 needs 8 samples per prompt, got 4"):
        best_of_n(selection, truth, per_prompt=4, ns=[8])


def test_sampling_once_for_the_largest_n(tokenizer, tinier_model):
    model = tinier_model().eval()
    prompts = ["Review:", "Verdict?", "The ending:"]
    calls = []

    def longest(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [float(len(text)) for text in completions]

    def truth(prompts, completions, **kwargs):
        return [float(text.count("e")) for text in completions]

    results, samples = sample_best_of_n(model, tokenizer, prompts, [1, 4], select=longest, truth=truth,
                                        max_new_tokens=6, seed=3)
    assert calls == [12] and samples.per_prompt == 4 and len(samples.texts) == 12 and not model.training
    best = results[1]
    for prompt, index in enumerate(best["picked"]):
        group = samples.texts[4 * prompt:4 * prompt + 4]
        assert len(samples.texts[index]) == max(map(len, group))
        assert best["rewards"][prompt] == samples.texts[index].count("e")
    again, _ = sample_best_of_n(model, tokenizer, prompts, [1, 4], select=longest, truth=truth, max_new_tokens=6,
                                seed=3)
    assert again == results
    with pytest.raises(ValueError, match="best-of-N"):
        sample_best_of_n(model, tokenizer, prompts, [0], select=longest)
    assert calls == [12, 12]  # the bad N failed before any sampling or scoring
