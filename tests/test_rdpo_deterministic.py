"""rDPO on deterministic preferences: like DPO, and unlike IPO, it never settles, and its loss has no floor.

The robust loss (-(1-eps) log sigma(z) + eps log sigma(-z)) / (1-2eps) was built for labels flipped with probability
eps. When every label is right (the better response always wins), its slope in z = beta h is
-((1-eps)(1-sigma(z)) + eps sigma(z)) / (1-2eps), never above -eps/(1-2eps): the push on the margin never stops and
the loss falls without bound (about -eps z / (1-2eps) for large z). Notebook 08 section 2 shows it on the bandit.
"""
import torch

from dpo_edu.bandit import sample_preferences, train_tabular_dpo
from dpo_edu.losses import dpo_loss

REF = torch.tensor([[0.35, 0.25, 0.20, 0.12, 0.08]], dtype=torch.float64)  # the bandit of tests/test_bandit.py
REWARDS = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5]], dtype=torch.float64)


def test_deterministic_preferences_rdpo_runs_away_like_dpo():
    prompts, chosen, rejected = sample_preferences(REWARDS, 2_000, generator=torch.Generator().manual_seed(2),
                                                   deterministic=True)
    for beta in (0.1, 1.0):
        _, ipo_history = train_tabular_dpo(REF, prompts, chosen, rejected, beta, loss_type="ipo", steps=2_000,
                                           record_every=500)
        _, history = train_tabular_dpo(REF, prompts, chosen, rejected, beta, loss_type="robust", label_smoothing=0.1,
                                       steps=2_000, record_every=500)
        loss = [record["loss"] for record in history]
        # unlike DPO's (>= 0, levelling off) and IPO's (settling), its loss goes below 0 and keeps falling at an
        # undiminished pace: no floor
        drops = [earlier - later for earlier, later in zip(loss[1:], loss[2:])]
        assert loss[-1] < 0 and min(drops) > 0.5 * max(drops), loss
        rejected_prob = [record["rejected_prob"] for record in history]
        assert ipo_history[-1]["rejected_prob"] > 0.02 and rejected_prob[-1] < ipo_history[-1]["rejected_prob"]
        if beta == 0.1:  # notebook 08's beta: pi(y_l) still falls, by more than 2x over the second half
            # (at beta = 1 Adam's sign-like steps lift the two best responses' logits at the same pace, and the mean
            # pi(y_l) stalls at about 0.013 while the loss keeps falling)
            assert all(later < earlier for earlier, later in zip(rejected_prob[1:], rejected_prob[2:]))
            assert rejected_prob[-1] < 0.5 * rejected_prob[2]


def test_rdpo_slope_never_falls_under_eps_over_one_minus_two_eps():
    z = torch.linspace(-30, 200, 23_001, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros_like(z)
    for eps in (0.05, 0.1, 0.3):
        loss = dpo_loss(z, zero, zero, zero, 1.0, loss_type="robust", label_smoothing=eps)[0]
        (slope,) = torch.autograd.grad(loss.sum(), z)
        floor = eps / (1 - 2 * eps)
        assert (-slope >= floor - 1e-12).all() and abs(-slope[-1].item() - floor) < 1e-12
        assert loss[-1].item() < -floor * 199  # about -eps z / (1 - 2 eps): unbounded below
        # DPO's own weight, 1 - sigma(z), does fall to 0 (its optimum is at infinity, approached ever more slowly)
        dpo = dpo_loss(z, zero, zero, zero, 1.0)[0]
        (dpo_slope,) = torch.autograd.grad(dpo.sum(), z)
        assert -dpo_slope[-1].item() < 1e-80 and dpo[-1].item() >= 0
