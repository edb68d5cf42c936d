"""The sympy checks return True for the derivation and False for the slips, and can tell the two apart."""
import pytest
import sympy as sp

from dpo_edu import derivations as d


def test_verify_all_steps_true():
    results = d.verify_all()
    assert set(results) == set(d.STEPS)
    assert len(results) >= 7
    assert all(value is True for value in results.values()), results


def test_known_slips_all_false():
    results = d.known_slips()
    assert len(results) == 6
    assert all(value is False for value in results.values()), results


def test_is_identity_tells_right_from_wrong():
    x, y = sp.symbols("x y", real=True)
    assert d.is_identity(sp.exp(x) / (sp.exp(x) + sp.exp(y)), d.sigmoid(x - y))
    assert not d.is_identity(sp.exp(x) / (sp.exp(x) + sp.exp(y)), d.sigmoid(y - x))
    assert not d.is_identity(d.sigmoid(x - y), d.sigmoid(x + y))


def test_undecided_identity_raises_rather_than_guessing(monkeypatch):
    x = sp.Symbol("x", positive=True)
    # make sympy's simplification useless: only the numeric fallback is left
    monkeypatch.setattr(d.sp, "simplify", lambda expr, *a, **k: expr)
    with pytest.raises(ArithmeticError, match="undecided"):
        d.is_identity(sp.sin(x) ** 2 + sp.cos(x) ** 2, sp.Integer(1))


def test_steps_fail_when_a_formula_is_broken(monkeypatch):
    """Each step depends on the formula it names: break the formula and the step says False."""
    # an inverted reward missing beta log Z does not solve pi* = pi_ref exp(r/beta) / Z
    monkeypatch.setattr(d, "reward_from_policy", lambda p, ref: d.beta * sp.log(p / ref))
    assert d.step_invert_optimal_policy() is False
    monkeypatch.undo()
    # a Bradley-Terry with the loser on top is not the sigmoid of r_w - r_l
    monkeypatch.setattr(d, "bt_probability_exp", lambda w, l: sp.exp(l) / (sp.exp(w) + sp.exp(l)))
    assert d.step_bradley_terry_is_sigmoid() is False
    monkeypatch.undo()


def test_gradient_step_fails_with_the_wrong_weight(monkeypatch):
    original = d.dpo_gradient_formula
    monkeypatch.setattr(d, "dpo_gradient_formula", lambda weight_sign=1: original(-weight_sign))
    assert d.step_dpo_gradient() is False


def test_lagrange_step_fails_with_the_wrong_optimum(monkeypatch):
    original = d.finite_response_space

    def wrong_space(n=4):
        rewards, ref_probs, policy, partition, optimum = original(n)
        # forgets pi_ref: exp(r/beta) / sum exp(r/beta)
        plain = sum(sp.exp(r / d.beta) for r in rewards)
        return rewards, ref_probs, policy, partition, tuple(sp.exp(r / d.beta) / plain for r in rewards)

    monkeypatch.setattr(d, "finite_response_space", wrong_space)
    assert d.step_optimal_policy_lagrange(3) is False


def test_objective_identity_fails_without_log_z(monkeypatch):
    original = d.finite_response_space

    def unnormalised(n=4):
        rewards, ref_probs, policy, partition, optimum = original(n)
        return rewards, ref_probs, policy, partition, tuple(p * sp.exp(r / d.beta) for p, r in zip(ref_probs, rewards))

    monkeypatch.setattr(d, "finite_response_space", unnormalised)
    assert d.step_objective_is_kl_to_optimum(3) is False


def test_maximum_check_distinguishes_max_from_min():
    assert d._is_maximum_on_simplex(sp.Integer(1), 3) is True
    assert d._is_maximum_on_simplex(sp.Integer(-1), 3) is False


def test_offset_outside_the_sigmoid_leaves_the_gradient_unchanged():
    wrong_loss = d.dpo_loss_expr() - d.delta
    assert d.is_identity(sp.diff(wrong_loss, d.theta), sp.diff(d.dpo_loss_expr(), d.theta))


def test_reparameterisation_step_true():
    assert d.step_reparameterisation() is True
    assert d.STEPS["5b reparameterisation"] is d.step_reparameterisation


def test_reparameterisation_fails_with_a_wrong_implicit_reward(monkeypatch):
    # without the log, Z_theta is not 1 and pi_theta is not the optimum of its own reward
    monkeypatch.setattr(d, "implicit_reward", lambda p, ref: d.beta * p / ref)
    assert d.step_reparameterisation() is False


def test_reparameterisation_fails_when_preferences_see_the_shift(monkeypatch):
    # a preference model that is not shift-invariant would tell r from r + f(x): Lemma 1 fails
    monkeypatch.setattr(d, "bt_probability_exp", lambda w, l: d.sigmoid(w + l))
    assert d.step_reparameterisation() is False


def test_partition_does_not_cancel_across_prompts():
    """The slip's check fails: with Z(x1) for y_w and Z(x2) for y_l the factor (Z1/Z2)^beta stays."""
    assert d.slip_partition_cancels_across_prompts() is False
    z_1, z_2 = sp.symbols("Z_1 Z_2", positive=True)
    chosen = d.reward_from_policy(d.pi_w, d.ref_w).subs(d.Z, z_1)
    rejected = d.reward_from_policy(d.pi_l, d.ref_l).subs(d.Z, z_2)
    probability = d.bt_probability_exp(chosen, rejected)
    assert not d.is_identity(sp.diff(probability, z_1), sp.Integer(0))  # it depends on Z(x1)
    # the same machinery says True when both answers share one prompt
    assert d.is_identity(probability.subs(z_2, z_1), d.dpo_preference_probability())


def test_tie_slip_is_detected_and_a_tie_barely_pulls():
    assert d.slip_tie_pulls_hardest() is False
    weight, gap, alpha = d.ties_start_weight()
    assert d.is_identity(weight, gap**alpha / (1 + gap**alpha))
    at_floor = float(weight.subs({gap: 1e-3, alpha: 1}))
    assert at_floor < 1e-3 < 0.5  # a DPO pair starts at weight 1/2


def test_tie_slip_would_hold_if_the_weight_fell_with_the_gap(monkeypatch):
    """The slip's check is decided by the weight's slope, not a constant False."""
    original = d.ties_start_weight

    def reversed_weight():
        weight, gap, alpha = original()
        return weight.subs(gap, 1 / gap), gap, alpha

    monkeypatch.setattr(d, "ties_start_weight", reversed_weight)
    assert d.slip_tie_pulls_hardest() is True
