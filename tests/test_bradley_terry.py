import math

import pytest
import torch

from dpo_edu import bradley_terry as bt


def test_probability_is_the_ratio_of_exponentials():
    chosen, rejected = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.0, 0.5, 1.0])
    ratio = chosen.exp() / (chosen.exp() + rejected.exp())
    assert torch.allclose(bt.preference_probability(chosen, rejected), ratio)
    assert bt.preference_probability(torch.tensor(0.0), torch.tensor(0.0)).item() == 0.5


def test_probability_is_stable_for_large_rewards():
    probability = bt.preference_probability(torch.tensor([1000.0]), torch.tensor([999.0]))
    assert probability.item() == pytest.approx(1 / (1 + math.exp(-1)))


def test_reward_model_loss_is_mean_negative_log_likelihood():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(5, generator=generator)
    winners, losers = bt.simulate_comparisons(scores, 40, generator=generator)
    loss = bt.reward_model_loss(scores[winners], scores[losers])
    assert loss.item() == pytest.approx(-bt.log_likelihood(scores, winners, losers).item() / 40, rel=1e-6)


def test_simulated_winners_follow_the_model():
    strengths = torch.tensor([0.0, 1.0])
    winners, losers = bt.simulate_comparisons(strengths, 20_000, generator=torch.Generator().manual_seed(1))
    assert torch.all(winners != losers)
    share = (winners == 1).float().mean().item()
    assert share == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_true_strengths(seed):
    """The issue's bar: 20 items, 2,000 comparisons, centred correlation >= 0.95."""
    generator = torch.Generator().manual_seed(seed)
    strengths = torch.randn(20, generator=generator, dtype=torch.float64)
    winners, losers = bt.simulate_comparisons(strengths, 2_000, generator=generator)
    fitted = bt.fit_bradley_terry(winners, losers, 20)
    assert fitted.mean().abs().item() < 1e-9
    correlation = torch.corrcoef(torch.stack([fitted, strengths - strengths.mean()]))[0, 1].item()
    assert correlation >= 0.95


def test_fit_is_a_maximum_of_the_likelihood():
    generator = torch.Generator().manual_seed(3)
    strengths = torch.randn(6, generator=generator, dtype=torch.float64)
    winners, losers = bt.simulate_comparisons(strengths, 500, generator=generator)
    fitted = bt.fit_bradley_terry(winners, losers, 6, l2=0.0).requires_grad_(True)
    (gradient,) = torch.autograd.grad(bt.log_likelihood(fitted, winners, losers), fitted)
    assert gradient.abs().max().item() < 1e-5


def test_fit_stays_finite_when_an_item_never_loses():
    winners, losers = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 2, 2])
    fitted = bt.fit_bradley_terry(winners, losers, 3)
    assert torch.isfinite(fitted).all() and fitted[0] > fitted[1] > fitted[2]


def test_fit_rejects_bad_indices():
    with pytest.raises(ValueError, match="losers holds an index outside"):
        bt.fit_bradley_terry(torch.tensor([0]), torch.tensor([5]), 3)
    with pytest.raises(ValueError, match="equal in shape"):
        bt.fit_bradley_terry(torch.tensor([0, 1]), torch.tensor([1]), 3)
