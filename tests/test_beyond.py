"""dpo_edu.beyond: the registry notebook 08 shows, label noise on the bandit, and the real-model helpers
(on a tiny random Llama with the real tokenizer)."""
import math

import pytest
import torch
import torch.nn.functional as F

from dpo_edu import beyond, losses
from dpo_edu.bandit import all_pairs, optimal_policy, total_variation, train_tabular_dpo
from dpo_edu.evaluate import evaluate_against, heldout_baseline, length_summary


def test_registry_covers_every_loss_type_and_renders():
    assert {row.settings["loss_type"] for row in beyond.VARIANTS} == set(losses.LOSS_TYPES)
    assert all(row.reference_free == (row.settings["loss_type"] in losses.REFERENCE_FREE) for row in beyond.VARIANTS)
    table = beyond.variants_table().splitlines()
    assert len(table) == 2 + len(beyond.VARIANTS) and all(line.replace("\\|", "").count("|") == 5 for line in table)
    assert beyond.variant("SimPO").settings["loss_type"] == "simpo"
    with pytest.raises(ValueError, match="known: DPO"):
        beyond.variant("KTO")


def test_variant_losses_are_their_formulas():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-30 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    nc, nl = (torch.randint(2, 20, (6,), generator=g).double() for _ in range(2))
    beta = 0.3
    h = (pc - rc) - (pr - rr)
    nll = -pc.sum() / nc.sum()
    expected = {
        "DPO": -F.logsigmoid(beta * h),
        "cDPO": -0.8 * F.logsigmoid(beta * h) - 0.2 * F.logsigmoid(-beta * h),
        "rDPO (robust)": (-0.8 * F.logsigmoid(beta * h) + 0.2 * F.logsigmoid(-beta * h)) / 0.6,
        "IPO": ((pc - rc) / nc - (pr - rr) / nl - 1 / (2 * beta)) ** 2,
        "hinge (RSO)": torch.relu(1 - beta * h),
        "ODPO": -F.logsigmoid(beta * h - 0.5),
        "RPO": -F.logsigmoid(beta * h) + nll,
        "SimPO": -F.logsigmoid(beta * (pc / nc - pr / nl) - 0.5),
    }
    for name, value in expected.items():
        got, _, _ = beyond.variant_loss(beyond.variant(name), pc, pr, rc, rr, beta, chosen_lengths=nc, rejected_lengths=nl)
        torch.testing.assert_close(got, value, msg=name)
    # reference-free rows never read the reference
    simpo, _, _ = beyond.variant_loss(beyond.variant("SimPO"), pc, pr, None, None, beta, chosen_lengths=nc, rejected_lengths=nl)
    torch.testing.assert_close(simpo, expected["SimPO"])


def test_flip_labels():
    chosen, rejected = torch.arange(10_000), torch.arange(10_000) + 1
    same = beyond.flip_labels(chosen, rejected, 0.0)
    assert torch.equal(same[0], chosen) and not same[2].any()
    new_chosen, new_rejected, flipped = beyond.flip_labels(chosen, rejected, 0.25, generator=torch.Generator().manual_seed(0))
    assert abs(flipped.float().mean().item() - 0.25) < 0.02
    assert torch.equal(new_chosen[flipped], rejected[flipped]) and torch.equal(new_rejected[~flipped], rejected[~flipped])
    for bad in (0.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            beyond.flip_labels(chosen, rejected, bad)
    assert beyond.noisy_preference_probability(torch.tensor(0.9), 0.1).item() == pytest.approx(0.82)


def test_robust_recovers_pi_star_on_exact_noisy_labels_and_dpo_cdpo_do_not():
    """Infinite data: each ordered pair weighted by P(labelled so) = (1 - eps) P(a > b) + eps P(b > a)."""
    ref = torch.tensor([[0.35, 0.25, 0.20, 0.12, 0.08]], dtype=torch.float64)
    rewards = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5]], dtype=torch.float64)
    prompts, chosen, rejected, weights = all_pairs(rewards)
    eps = 0.2
    lookup = {(int(c), int(r)): w for c, r, w in zip(chosen, rejected, weights)}
    noisy = torch.stack([(1 - eps) * lookup[int(c), int(r)] + eps * lookup[int(r), int(c)] for c, r in zip(chosen, rejected)])
    target = optimal_policy(ref, rewards, 1.0)
    tv = {}
    for name, settings in {"dpo": {}, "cdpo": {"label_smoothing": eps}, "robust": {"loss_type": "robust", "label_smoothing": eps}}.items():
        policy, _ = train_tabular_dpo(ref, prompts, chosen, rejected, 1.0, steps=400, learning_rate=0.1, record_every=400,
                                      weights=noisy, **settings)
        tv[name] = total_variation(policy, target).item()
    assert tv["robust"] < 1e-3 < 0.05 < tv["dpo"] < tv["cdpo"], tv


def test_small_helpers():
    assert length_summary([4, 8, 8, 2], 8) == {"mean": 5.5, "at_limit": 0.5}
    with pytest.raises(ValueError):
        length_summary([], 8)
    assert beyond.tail_mean([1.0, 2.0, 3.0, 4.0], 2) == 3.5 and beyond.tail_mean([1.0], 5) == 1.0
    assert beyond.trajectory([{"a": 1.0}, {"a": 2.0}], "a") == [1.0, 2.0]


# ------------------------------------------------------- real-model helpers, on a tiny random Llama

PROMPTS = ["Bring tissues to Velvet Summer, because", "The best thing I can say about Iron Tide is that",
           "Let me be honest:", "I walked out of Paper Moons thinking", "Nobody warned me that Glass Harbour"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer, tiny_model):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


@pytest.fixture()
def graded_rewards(monkeypatch):
    """VADER scores random text 0 almost always; give every sample a distinct score so that every prompt makes a pair."""
    import dpo_edu.rewards

    monkeypatch.setattr(dpo_edu.rewards, "sentiment_rewards", lambda texts: [((7 * i) % 11) / 10 for i, _ in enumerate(texts)])


def _config(**overrides):
    from dpo_edu.train import TrainConfig

    settings = dict(beta=0.1, learning_rate=5e-3, batch_size=2, epochs=1, warmup_steps=0, max_length=32, max_prompt_length=16,
                    use_chat_template=False, mixed_precision="fp32", seed=0)
    return TrainConfig(**{**settings, **overrides})


def test_train_variant_dpo_round_and_evaluate(tiny, graded_rewards):
    from dpo_edu.models import load_model

    path, tokenizer = tiny
    sampling = dict(per_prompt=2, max_new_tokens=6, batch_size=8, min_gap=0.05)
    pairs, counts = beyond.label_pairs(load_model(path)[0], tokenizer, PROMPTS, seed=0, **sampling)
    assert counts["pairs"] == len(pairs) > 0 and counts["samples"] == 2 * len(PROMPTS)

    policy, history = beyond.train_variant(path, tokenizer, pairs, _config(), log=None)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    _, simpo_history = beyond.train_variant(path, tokenizer, pairs, _config(loss_type="simpo", beta=2.0),
                                            reference=(torch.zeros(len(pairs)), torch.zeros(len(pairs))), log=None)
    assert len(simpo_history) == len(history)  # the reference is dropped for a reference-free type

    # round 2 starts from a trained policy but scores against the fixed reference: step 1's margin is not 0
    reference, _ = load_model(path)
    round2 = beyond.dpo_round(policy, reference, tokenizer, PROMPTS[::-1], _config(), seed=1, **sampling)
    assert round2["counts"]["pairs"] == len(round2["pairs"]) and round2["history"]
    assert abs(round2["history"][0]["rewards/margins"]) > 1e-6

    evaluation = dict(max_new_tokens=6, batch_size=8)
    baseline = heldout_baseline(reference, tokenizer, PROMPTS, seed=3, **evaluation)
    assert len(baseline["rewards"]) == len(PROMPTS) and all(1 <= n <= 6 for n in baseline["lengths"])
    same = evaluate_against(reference, None, tokenizer, PROMPTS, baseline, seed=4, **evaluation)
    assert same["kl"] == 0.0 and 0 <= same["length_at_limit"] <= 1 and 1 <= same["length_mean"] <= 6
    moved = evaluate_against(policy, reference, tokenizer, PROMPTS, baseline, seed=4, **evaluation)
    assert moved["kl"] != 0.0


def test_prefix_scores_sum_and_mean_on_a_known_model(tokenizer, tiny_model):
    """A policy that is the reference has log-ratio 0 at every length; mean_logp is the summed log-prob over L."""
    from dpo_edu.beyond import prefix_scores

    model, other = tiny_model(), tiny_model(seed=1)
    prompts, completions = ["The film was", "I thought"], [" a warm and funny story about two old friends", " it"]
    same = prefix_scores(model, model, tokenizer, prompts, completions, lengths=(2, 4))
    assert same[2]["n"] == 1 and same[4]["log_ratio"] == 0.0  # the one-token completion is left out
    scores = prefix_scores(model, other, tokenizer, prompts, completions, lengths=(2, 4))
    ids = tokenizer(prompts[0] + completions[0], add_special_tokens=False)["input_ids"]
    prompt_len = len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    total = sum(logps[prompt_len - 1 + t, ids[prompt_len + t]].item() for t in range(4))
    assert abs(scores[4]["mean_logp"] - total / 4) < 1e-4 and scores[4]["log_ratio"] != 0.0
