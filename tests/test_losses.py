import math

import pytest
import torch
import torch.nn.functional as F

from dpo_edu.losses import LOSS_TYPES, LOSSES, REFERENCE_FREE, check_loss_settings, dpo_loss, odpo_offset


def random_logps(batch=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(-30 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4))


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_ln2_and_zero_margins_when_policy_equals_reference(beta):
    chosen, rejected, _, _ = random_logps()
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)))
    assert torch.all(chosen_rewards == 0) and torch.all(rejected_rewards == 0)
    assert torch.all(chosen_rewards - rejected_rewards == 0)


def test_sigmoid_loss_formula_and_rewards():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps()
    beta = 0.2
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    assert torch.allclose(losses, -torch.log(torch.sigmoid(margin)))
    assert torch.allclose(chosen_rewards, beta * (policy_chosen - ref_chosen))
    assert torch.allclose(rejected_rewards, beta * (policy_rejected - ref_rejected))


def test_rewards_are_detached():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps()
    policy_chosen.requires_grad_(True)
    losses, chosen_rewards, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    assert losses.requires_grad and not chosen_rewards.requires_grad


def test_autograd_matches_derived_gradient():
    """d loss / d log pi_w = -beta sigmoid(r_hat_l - r_hat_w) = -d loss / d log pi_l."""
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps(seed=1)
    policy_chosen.requires_grad_(True)
    policy_rejected.requires_grad_(True)
    beta = 0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    grad_chosen, grad_rejected = torch.autograd.grad(losses.sum(), (policy_chosen, policy_rejected))
    weight = torch.sigmoid(rejected_rewards - chosen_rewards)
    assert torch.allclose(grad_chosen, -beta * weight, atol=1e-12)
    assert torch.allclose(grad_rejected, beta * weight, atol=1e-12)
    wrong_weight = torch.sigmoid(chosen_rewards - rejected_rewards)
    assert not torch.allclose(grad_chosen, -beta * wrong_weight, atol=1e-3)


def test_label_smoothing_is_cdpo():
    logps = random_logps(seed=2)
    beta, eps = 0.1, 0.2
    losses, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta, label_smoothing=eps)
    z = chosen_rewards - rejected_rewards
    expected = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    assert torch.allclose(losses, expected)
    plain, _, _ = dpo_loss(*logps, beta)
    assert not torch.allclose(losses, plain)


def test_ipo_and_hinge_formulas():
    logps = random_logps(seed=3)
    beta = 0.25
    h = (logps[0] - logps[2]) - (logps[1] - logps[3])
    ipo, _, _ = dpo_loss(*logps, beta, loss_type="ipo")
    hinge, _, _ = dpo_loss(*logps, beta, loss_type="hinge")
    assert torch.allclose(ipo, (h - 1 / (2 * beta)) ** 2)
    assert torch.allclose(hinge, torch.clamp(1 - beta * h, min=0))


def test_offset_sits_inside_the_sigmoid():
    logps = random_logps(seed=4)
    beta = 0.1
    offset = torch.linspace(-1, 2, 32, dtype=torch.float64)
    losses, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta, offset=offset)
    assert torch.allclose(losses, -F.logsigmoid(chosen_rewards - rejected_rewards - offset))
    zero, _, _ = dpo_loss(*logps, beta, offset=torch.zeros(32, dtype=torch.float64))
    plain, _, _ = dpo_loss(*logps, beta)
    assert torch.allclose(zero, plain)


def test_offset_changes_the_gradient():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps(seed=5)
    gradients = []
    for offset in (0.0, 1.5):
        policy = policy_chosen.clone().requires_grad_(True)
        losses, _, _ = dpo_loss(policy, policy_rejected, ref_chosen, ref_rejected, 0.1, offset=torch.full((32,), offset, dtype=torch.float64))
        gradients.append(torch.autograd.grad(losses.sum(), policy)[0])
    assert not torch.allclose(*gradients)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "kto"}, "unknown loss_type 'kto' \\(known: sigmoid, robust, ipo, hinge, simpo, orpo\\)"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"loss_type": "ipo", "offset": torch.zeros(4)}, "offset"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_bad_configuration_is_named(kwargs, message):
    logps = random_logps(batch=4)
    with pytest.raises(ValueError, match=message):
        dpo_loss(*logps, **kwargs)


def test_shape_mismatch_is_named():
    a, b, c, d = random_logps(batch=4)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(a, b, c, d[:3])


def test_loss_types_listed():
    assert LOSS_TYPES == ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
    assert tuple(LOSSES) == LOSS_TYPES


def test_odpo_offset_values_and_ties():
    chosen = torch.tensor([0.9, 0.5, 0.3, 0.3])
    rejected = torch.tensor([-0.9, 0.4, 0.3, 0.2995])
    offset = odpo_offset(chosen, rejected, alpha=2.0)
    assert torch.isfinite(offset).all()
    assert offset[0].item() == pytest.approx(2.0 * math.log(1.8), rel=1e-6)
    assert offset[1].item() == pytest.approx(2.0 * math.log(0.1), rel=1e-5)
    # a tie and a near-tie below min_gap both get the floor alpha * log(min_gap)
    assert offset[2].item() == pytest.approx(2.0 * math.log(1e-3), rel=1e-6)
    assert offset[3].item() == pytest.approx(2.0 * math.log(1e-3), rel=1e-6)
    losses, _, _ = dpo_loss(*random_logps(batch=4), 0.1, offset=offset)
    assert torch.isfinite(losses).all()


@pytest.mark.parametrize("chosen, rejected", [([0.1, 0.2], [0.0, 0.5]), ([0.1, float("nan")], [0.0, 0.0]), ([float("inf"), 0.0], [0.0, -1.0])])
def test_odpo_offset_rejects_misordered_or_nonfinite(chosen, rejected):
    with pytest.raises(ValueError, match="row 1|row 0"):
        odpo_offset(torch.tensor(chosen), torch.tensor(rejected))


def test_odpo_offset_score_scale_sets_where_offsets_turn_negative():
    chosen, rejected = torch.tensor([0.9, 0.15, 0.05]), torch.tensor([-0.9, 0.0, 0.0])  # gaps 1.8, 0.15, 0.05
    unscaled = odpo_offset(chosen, rejected, alpha=1.0)
    scaled = odpo_offset(chosen, rejected, alpha=1.0, scale=10.0)
    assert (unscaled[1:] < 0).all()  # VADER-sized gaps below 1 relax DPO
    assert torch.allclose(scaled, unscaled + math.log(10.0)) and scaled[1] > 0 > scaled[2]
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            odpo_offset(chosen, rejected, scale=bad)


def test_train_config_passes_the_score_scale_to_the_offsets():
    from dpo_edu.train import TrainConfig, pair_offsets

    pairs = [{"chosen_score": 0.5, "rejected_score": 0.3}]
    assert pair_offsets(pairs, 1.0, 10.0).item() == pytest.approx(math.log(2.0), rel=1e-5)
    with pytest.raises(ValueError, match="odpo_score_scale"):
        TrainConfig(odpo_alpha=1.0, odpo_score_scale=0.0)


# ---- the variants beyond DPO: each checked against its paper's formula, written out here ----

def random_lengths(batch=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1, 40, (batch,), generator=generator).double() for _ in range(2))


def test_robust_is_the_unbiased_loss():
    """rDPO (Chowdhury et al. 2024, eq. 4): labels flipped with probability eps; the expected robust loss is the clean DPO loss."""
    logps = random_logps(seed=6)
    beta, eps = 0.3, 0.2
    robust, chosen_rewards, rejected_rewards = dpo_loss(*logps, beta, loss_type="robust", label_smoothing=eps)
    z = chosen_rewards - rejected_rewards
    assert torch.allclose(robust, (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps))
    flipped, _, _ = dpo_loss(logps[1], logps[0], logps[3], logps[2], beta, loss_type="robust", label_smoothing=eps)
    assert torch.allclose((1 - eps) * robust + eps * flipped, -F.logsigmoid(z))
    cdpo, _, _ = dpo_loss(*logps, beta, label_smoothing=eps)  # cDPO is biased: its expectation is not the clean loss
    cdpo_flipped, _, _ = dpo_loss(logps[1], logps[0], logps[3], logps[2], beta, label_smoothing=eps)
    assert not torch.allclose((1 - eps) * cdpo + eps * cdpo_flipped, -F.logsigmoid(z), atol=1e-3)
    plain, _, _ = dpo_loss(*logps, beta, loss_type="robust")
    assert torch.allclose(plain, -F.logsigmoid(z))  # eps = 0 is DPO


def test_ipo_divides_log_ratios_by_length():
    logps = random_logps(seed=7)
    chosen_lengths, rejected_lengths = random_lengths(seed=7)
    beta = 0.25
    ipo, _, _ = dpo_loss(*logps, beta, loss_type="ipo", chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    h_avg = (logps[0] - logps[2]) / chosen_lengths - (logps[1] - logps[3]) / rejected_lengths
    assert torch.allclose(ipo, (h_avg - 1 / (2 * beta)) ** 2)
    summed, _, _ = dpo_loss(*logps, beta, loss_type="ipo")
    assert not torch.allclose(ipo, summed)


def test_simpo_formula_needs_no_reference():
    """SimPO (Meng et al. 2024, eq. 6): -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)."""
    policy_chosen, policy_rejected, _, _ = random_logps(seed=8)
    chosen_lengths, rejected_lengths = random_lengths(seed=8)
    beta, gamma = 2.0, 0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, None, None, beta, loss_type="simpo", simpo_gamma=gamma,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    expected = -F.logsigmoid(beta * policy_chosen / chosen_lengths - beta * policy_rejected / rejected_lengths - gamma)
    assert torch.allclose(losses, expected)
    assert torch.allclose(chosen_rewards, beta * policy_chosen / chosen_lengths)
    assert torch.allclose(rejected_rewards, beta * policy_rejected / rejected_lengths)
    with_ref, _, _ = dpo_loss(policy_chosen, policy_rejected, policy_chosen * 0, policy_rejected * 0, beta, loss_type="simpo",
                              simpo_gamma=gamma, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    assert torch.equal(with_ref, losses)  # a reference, if given, is ignored


def test_orpo_formula():
    """ORPO (Hong et al. 2024, eqs. 2-7): odds from the length-averaged probability; L = L_SFT + lambda L_OR."""
    policy_chosen, policy_rejected, _, _ = random_logps(seed=9)
    chosen_lengths, rejected_lengths = random_lengths(seed=9)
    lam = 0.1
    losses, _, _ = dpo_loss(policy_chosen, policy_rejected, beta=lam, loss_type="orpo",
                            chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    p_w, p_l = torch.exp(policy_chosen / chosen_lengths), torch.exp(policy_rejected / rejected_lengths)
    odds_w, odds_l = p_w / (1 - p_w), p_l / (1 - p_l)
    nll = -policy_chosen.sum() / chosen_lengths.sum()
    assert torch.allclose(losses, nll - lam * torch.log(torch.sigmoid(torch.log(odds_w / odds_l))))


def test_sft_weight_adds_the_token_mean_nll():
    """RPO (Pang et al. 2024): DPO + w * NLL(chosen); the NLL is TRL's "sft" term, a mean over the batch's chosen tokens."""
    logps = random_logps(seed=10)
    chosen_lengths, rejected_lengths = random_lengths(seed=10)
    beta, weight = 0.1, 0.5
    plain, _, _ = dpo_loss(*logps, beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    rpo, _, _ = dpo_loss(*logps, beta, sft_weight=weight, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    nll = -logps[0].sum() / chosen_lengths.sum()
    assert torch.allclose(rpo.mean(), plain.mean() + weight * nll)
    policy_chosen = logps[0].clone().requires_grad_(True)  # the NLL term pulls log pi(y_w) up: a more negative gradient
    gradients = [torch.autograd.grad(dpo_loss(policy_chosen, *logps[1:], beta, sft_weight=w)[0].mean(), policy_chosen)[0]
                 for w in (0.0, weight)]
    assert torch.all(gradients[1] < gradients[0])


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo", "hinge"])
def test_reference_based_types_need_a_reference(loss_type):
    policy_chosen, policy_rejected, _, _ = random_logps(batch=4)
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        dpo_loss(policy_chosen, policy_rejected, None, None, 0.1, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_type_is_finite_with_gradients(loss_type):
    logps = [t.clone().requires_grad_(True) for t in random_logps(batch=8, seed=11)]
    chosen_lengths, rejected_lengths = random_lengths(batch=8, seed=11)
    losses, _, _ = dpo_loss(*logps, 0.5, loss_type=loss_type, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    grad = torch.autograd.grad(losses.mean(), logps[0])[0]
    assert torch.isfinite(losses).all() and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (loss_type in REFERENCE_FREE) == (loss_type in ("simpo", "orpo"))


def test_settings_are_checked_in_one_place():
    assert check_loss_settings("sigmoid", 0.1) == []
    assert check_loss_settings("robust", 0.1, label_smoothing=0.2) == []
    assert check_loss_settings("kto", 0.1) == ["unknown loss_type 'kto' (known: sigmoid, robust, ipo, hinge, simpo, orpo)"]
    problems = check_loss_settings("ipo", -1, label_smoothing=0.1, sft_weight=-1, offset=True)
    assert len(problems) == 4 and "beta" in problems[0] and "label_smoothing" in problems[1]
