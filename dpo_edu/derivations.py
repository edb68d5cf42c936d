"""Every step of the DPO derivation, checked with sympy.

Each function returns a bool computed from the algebra; none returns a constant.
`verify_all()` runs the steps of the derivation (all must be True);
`known_slips()` runs the same machinery on the slips found in popular
write-ups (all must be False: the machinery can tell a wrong step from a right one).

Identities are decided by :func:`is_identity`: sympy simplifies the difference;
if that does not reach zero, the difference is evaluated at random points, and
only a clearly non-zero value counts as False. So a False is never just
"sympy gave up".
"""

from __future__ import annotations

import functools
import random

import sympy as sp
from sympy.core.function import AppliedUndef

# ---------------------------------------------------------------- symbols
beta = sp.Symbol("beta", positive=True)
r_w, r_l = sp.symbols("r_w r_l", real=True)  # rewards of the preferred / dispreferred response
Z = sp.Symbol("Z", positive=True)  # the partition function Z(x)
pi_w, pi_l = sp.symbols("pi_w pi_l", positive=True)  # pi*(y|x) of the two responses
ref_w, ref_l = sp.symbols("pi_ref_w pi_ref_l", positive=True)  # pi_ref(y|x) of the two responses
delta = sp.Symbol("Delta", real=True)  # ODPO's offset
theta = sp.Symbol("theta", real=True)  # one policy parameter, to take gradients
logp_w = sp.Function("logpi_w")(theta)  # log pi_theta(y_w|x) as a function of theta
logp_l = sp.Function("logpi_l")(theta)
logref_w, logref_l = sp.symbols("logpi_ref_w logpi_ref_l", real=True)


def sigmoid(z: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-z))


def is_identity(lhs: sp.Expr, rhs: sp.Expr, *, trials: int = 8, seed: int = 0) -> bool:
    """True if lhs == rhs for all values of their symbols.

    First sympy: the simplified difference is 0 (or, for expressions with
    logs, the difference of their exponentials is). Failing that, numbers: evaluate
    the difference at `trials` random points (positive symbols get positive
    values); any clearly non-zero value means False. If sympy cannot simplify
    the difference but every point gives zero, raise: the check is undecided.
    """
    difference = sp.simplify(sp.expand_log(sp.expand(lhs - rhs), force=True))
    if difference == 0:
        return True
    if lhs.has(sp.log) or rhs.has(sp.log):
        # exp is one-to-one on the reals, and sympy handles ratios of
        # exponentials better than sums of logs of them
        if sp.simplify(sp.exp(lhs) - sp.exp(rhs)) == 0:
            return True
    rng = random.Random(seed)
    symbols = sorted(difference.free_symbols, key=str)
    # undefined functions such as logpi_w(theta), and their derivatives, stand for
    # arbitrary values: give each a random number (derivatives first, while they
    # still contain the function they differentiate)
    derivatives = sorted(difference.atoms(sp.Derivative), key=str)
    functions = sorted(difference.atoms(AppliedUndef), key=str)
    largest = 0.0
    for _ in range(trials):
        point = {}
        for symbol in symbols:
            value = rng.uniform(0.2, 2.0)
            point[symbol] = value if symbol.is_positive else value * rng.choice((-1, 1))
        expression = difference
        for unknown in derivatives + functions:
            expression = expression.subs(unknown, rng.uniform(-2, 2))
        value = complex(expression.subs(point).evalf())
        largest = max(largest, abs(value))
    if largest > 1e-9:
        return False
    raise ArithmeticError(
        f"undecided: sympy could not simplify {difference} to 0, yet it is 0 at {trials} random points"
    )


# ------------------------------------------------- step 1: Bradley-Terry


def bt_probability_exp(reward_chosen: sp.Expr, reward_rejected: sp.Expr) -> sp.Expr:
    """Bradley-Terry as the DPO paper writes it: a ratio of exponentials."""
    return sp.exp(reward_chosen) / (sp.exp(reward_chosen) + sp.exp(reward_rejected))


def step_bradley_terry_is_sigmoid() -> bool:
    """exp(r_w) / (exp(r_w) + exp(r_l)) == sigmoid(r_w - r_l)."""
    return is_identity(bt_probability_exp(r_w, r_l), sigmoid(r_w - r_l))


# --------------------------------------- step 2: the reward-model loss


def step_reward_loss_is_nll(n_pairs: int = 3) -> bool:
    """-log prod_i P(w_i beats l_i) == sum_i -log sigmoid(r_w,i - r_l,i), and its gradient.

    The gradient of -log sigmoid(d) with respect to r_w is -sigmoid(-d): a
    mis-ranked pair (d < 0) is pushed hardest.
    """
    winners = sp.symbols(f"r_w1:{n_pairs + 1}", real=True)
    losers = sp.symbols(f"r_l1:{n_pairs + 1}", real=True)
    likelihood = sp.Mul(*[bt_probability_exp(winner, loser) for winner, loser in zip(winners, losers)])
    loss = sum(-sp.log(sigmoid(winner - loser)) for winner, loser in zip(winners, losers))
    nll_matches = is_identity(-sp.log(likelihood), loss)
    gradient_matches = is_identity(sp.diff(-sp.log(sigmoid(r_w - r_l)), r_w), -sigmoid(r_l - r_w))
    return nll_matches and gradient_matches


# ------------------------ step 3: the KL-regularised optimum, via Lagrange


@functools.lru_cache(maxsize=None)
def finite_response_space(n: int = 4):
    """Symbols for a response space of n responses: rewards r_i, reference probs p_i, policy q_i."""
    rewards = sp.symbols(f"r1:{n + 1}", real=True)
    ref_probs = sp.symbols(f"p1:{n + 1}", positive=True)
    policy = sp.symbols(f"q1:{n + 1}", positive=True)
    partition = sum(p * sp.exp(r / beta) for p, r in zip(ref_probs, rewards))
    optimum = tuple(p * sp.exp(r / beta) / partition for p, r in zip(ref_probs, rewards))
    return rewards, ref_probs, policy, partition, optimum


def kl(policy, ref_probs) -> sp.Expr:
    return sum(q * sp.log(q / p) for q, p in zip(policy, ref_probs))


def objective(policy, ref_probs, rewards) -> sp.Expr:
    """E_pi[r] - beta KL(pi || pi_ref) on a finite response space."""
    return sum(q * r for q, r in zip(policy, rewards)) - beta * kl(policy, ref_probs)


def step_optimal_policy_lagrange(n: int = 4) -> bool:
    """Maximise E_q[r] - beta KL(q || p) subject to sum q = 1 with a Lagrange multiplier.

    Solve each stationarity condition for q_i, solve the constraint for the
    multiplier, and compare with p_i exp(r_i / beta) / Z. Then check it is a
    maximum: on the simplex (q_n = 1 - the rest) the Hessian is negative
    definite (Sylvester: the leading minors of -H are positive).
    """
    rewards, ref_probs, policy, partition, optimum = finite_response_space(n)
    multiplier = sp.Symbol("lambda", real=True)
    lagrangian = objective(policy, ref_probs, rewards) + multiplier * (sum(policy) - 1)
    stationary = {q: sp.expand(sp.expand_log(sp.solve(sp.diff(lagrangian, q), q)[0], force=True)) for q in policy}
    multiplier_value = sp.solve(sp.Eq(sum(stationary.values()), 1), multiplier)[0]
    solution = [sp.simplify(stationary[q].subs(multiplier, multiplier_value)) for q in policy]
    is_closed_form = all(is_identity(s, o) for s, o in zip(solution, optimum))
    return is_closed_form and _is_maximum_on_simplex(sp.Integer(1), n)


def _is_maximum_on_simplex(sign: sp.Expr, n: int) -> bool:
    """Is sign * (E_q[r] - beta KL(q||p)) strictly concave inside the simplex (n responses)?

    If so its stationary point is its unique maximum. Concavity is checked with
    Sylvester's criterion on the Hessian at a generic interior point.
    """
    rewards, ref_probs, policy, _, _ = finite_response_space(n)
    free = policy[:-1]
    on_simplex = {policy[-1]: 1 - sum(free)}
    function = sign * objective(policy, ref_probs, rewards).subs(on_simplex)
    negative_hessian = -sp.hessian(function, free)
    # a point inside the simplex, written so sympy can see every q_i > 0:
    # q_i = w_i / (w_1 + ... + w_n) with w_i > 0
    weights = sp.symbols(f"w1:{n + 1}", positive=True)
    inside = {q: w / sum(weights) for q, w in zip(free, weights)}
    minors = [sp.factor(sp.simplify(negative_hessian[:k, :k].det().subs(inside))) for k in range(1, len(free) + 1)]
    return all(bool(m.is_positive) for m in minors)


def step_objective_is_kl_to_optimum(n: int = 4) -> bool:
    """E_q[r] - beta KL(q||p) == beta log Z - beta KL(q||pi*) for every q on the simplex.

    beta log Z does not depend on q and KL >= 0 with equality only at q = pi*:
    so pi* is the unique maximiser, and the maximum is beta log Z.
    """
    rewards, ref_probs, policy, partition, optimum = finite_response_space(n)
    on_simplex = {policy[-1]: 1 - sum(policy[:-1])}
    lhs = objective(policy, ref_probs, rewards).subs(on_simplex)
    rhs = (beta * sp.log(partition) - beta * kl(policy, optimum)).subs(on_simplex)
    return is_identity(lhs, rhs)


# --------------------------- step 4: invert the optimum to get the reward


def reward_from_policy(policy_prob: sp.Expr, ref_prob: sp.Expr) -> sp.Expr:
    """r = beta log(pi* / pi_ref) + beta log Z: the reward implied by an optimal policy."""
    return beta * sp.log(policy_prob / ref_prob) + beta * sp.log(Z)


def step_invert_optimal_policy() -> bool:
    """Solving pi* = pi_ref exp(r / beta) / Z for r gives beta log(pi*/pi_ref) + beta log Z."""
    reward = sp.Symbol("r", real=True)
    solutions = sp.solve(sp.Eq(pi_w, ref_w * sp.exp(reward / beta) / Z), reward)
    return len(solutions) == 1 and is_identity(solutions[0], reward_from_policy(pi_w, ref_w))


# ---------------------------- step 5: Z cancels inside Bradley-Terry


def dpo_preference_probability() -> sp.Expr:
    """sigmoid(beta log(pi_w/ref_w) - beta log(pi_l/ref_l)): no Z anywhere."""
    return sigmoid(beta * sp.log(pi_w / ref_w) - beta * sp.log(pi_l / ref_l))


def step_partition_cancels() -> bool:
    """Put r = beta log(pi/pi_ref) + beta log Z into Bradley-Terry: Z drops out."""
    substituted = bt_probability_exp(reward_from_policy(pi_w, ref_w), reward_from_policy(pi_l, ref_l))
    simplified = sp.simplify(sp.expand_log(substituted, force=True))
    return Z not in simplified.free_symbols and is_identity(substituted, dpo_preference_probability())


# ------------- step 5b: the reparameterisation (DPO paper section 5, Theorem 1)


def implicit_reward(policy_prob: sp.Expr, ref_prob: sp.Expr) -> sp.Expr:
    """r_hat = beta log(pi / pi_ref): the reward a policy implies, without the beta log Z."""
    return beta * sp.log(policy_prob / ref_prob)


def step_reparameterisation(n: int = 3) -> bool:
    """Any policy is the optimum of its own implicit reward, and that reward stands for its whole class.

    On n responses with pi_theta = (q_1, ..., q_n) on the simplex and r_hat_i = beta log(q_i / p_i):
    (a) Z_theta = sum_i p_i exp(r_hat_i / beta) = 1, so p_i exp(r_hat_i / beta) / Z_theta = q_i:
        pi_theta is the KL-regularised optimum for r_hat (Theorem 1's "every policy").
    (b) r and r + f(x) have the same optimum (Lemma 2) and the same Bradley-Terry
        probabilities (Lemma 1): f(x) is invisible to preference data.
    (c) every r differs from the implicit reward of its own optimum pi_r by beta log Z(x),
        the same for every response: r's class contains beta log(pi_r / pi_ref) (Theorem 1).
    (d) two implicit rewards in one class are equal: if q'_i = q_i exp(f / beta) for every i,
        both on the simplex, then f = 0.
    """
    rewards, ref_probs, policy, partition, optimum = finite_response_space(n)
    on_simplex = {policy[-1]: 1 - sum(policy[:-1])}
    implicit = [implicit_reward(q, p) for q, p in zip(policy, ref_probs)]
    z_theta = sum(p * sp.exp(r / beta) for p, r in zip(ref_probs, implicit))
    normalised = is_identity(z_theta.subs(on_simplex), sp.Integer(1))
    own_optimum = all(
        is_identity((p * sp.exp(r / beta) / z_theta).subs(on_simplex), q.subs(on_simplex))
        for p, r, q in zip(ref_probs, implicit, policy)
    )
    f = sp.Symbol("f", real=True)  # any function of the prompt alone: one number for a fixed x
    shifted_partition = sum(p * sp.exp((r + f) / beta) for p, r in zip(ref_probs, rewards))
    same_optimum = all(
        is_identity(p * sp.exp((r + f) / beta) / shifted_partition, o) for p, r, o in zip(ref_probs, rewards, optimum)
    )
    same_preferences = is_identity(bt_probability_exp(r_w + f, r_l + f), bt_probability_exp(r_w, r_l))
    in_class = all(
        is_identity(r - implicit_reward(o, p), beta * sp.log(partition)) for r, o, p in zip(rewards, optimum, ref_probs)
    )
    shifts = sp.solve(sp.Eq(sum(q * sp.exp(f / beta) for q in policy).subs(on_simplex), 1), f)
    unique = shifts == [0]
    return normalised and own_optimum and same_optimum and same_preferences and in_class and unique


# ------------------------------------------ step 6: the DPO gradient


def implicit_rewards() -> tuple[sp.Expr, sp.Expr]:
    """r_hat = beta (log pi_theta - log pi_ref) for y_w and y_l, as functions of theta."""
    return beta * (logp_w - logref_w), beta * (logp_l - logref_l)


def dpo_loss_expr(offset: sp.Expr = sp.Integer(0)) -> sp.Expr:
    reward_w, reward_l = implicit_rewards()
    return -sp.log(sigmoid(reward_w - reward_l - offset))


def dpo_gradient_formula(weight_sign: int = 1) -> sp.Expr:
    """-beta sigmoid(r_hat_l - r_hat_w) (d log pi_w - d log pi_l); weight_sign=-1 swaps the weight."""
    reward_w, reward_l = implicit_rewards()
    weight = sigmoid(weight_sign * (reward_l - reward_w))
    return -beta * weight * (sp.diff(logp_w, theta) - sp.diff(logp_l, theta))


def step_dpo_gradient() -> bool:
    """d/dtheta of the DPO loss == -beta sigmoid(r_hat_l - r_hat_w) (grad log pi_w - grad log pi_l)."""
    return is_identity(sp.diff(dpo_loss_expr(), theta), dpo_gradient_formula())


# -------------------------------------------------------- step 7: ODPO


def step_odpo_offset_inside() -> bool:
    """ODPO: -log sigmoid(r_hat_w - r_hat_l - Delta).

    Checks: it is DPO at Delta = 0; its gradient is the DPO gradient with the
    weight sigmoid(r_hat_l - r_hat_w + Delta), so the offset changes what is
    learned (the gradient depends on Delta).
    """
    loss = dpo_loss_expr(delta)
    reward_w, reward_l = implicit_rewards()
    expected_gradient = -beta * sigmoid(reward_l - reward_w + delta) * (sp.diff(logp_w, theta) - sp.diff(logp_l, theta))
    gradient = sp.diff(loss, theta)
    return (
        is_identity(loss.subs(delta, 0), dpo_loss_expr())
        and is_identity(gradient, expected_gradient)
        and not is_identity(sp.diff(gradient, delta), sp.Integer(0))
    )


STEPS = {
    "1 bradley_terry_is_sigmoid": step_bradley_terry_is_sigmoid,
    "2 reward_loss_is_nll": step_reward_loss_is_nll,
    "3a optimal_policy_lagrange": step_optimal_policy_lagrange,
    "3b objective_is_kl_to_optimum": step_objective_is_kl_to_optimum,
    "4 invert_optimal_policy": step_invert_optimal_policy,
    "5 partition_cancels": step_partition_cancels,
    "5b reparameterisation": step_reparameterisation,
    "6 dpo_gradient": step_dpo_gradient,
    "7 odpo_offset_inside": step_odpo_offset_inside,
}


def verify_all() -> dict[str, bool]:
    """Run every derivation step; each value is the outcome of a sympy computation."""
    return {name: bool(step()) for name, step in STEPS.items()}


# ---------------------------------------------------------- known slips


def slip_gradient_weight() -> bool:
    """Slip: the gradient weight is sigmoid(r_hat_w - r_hat_l). True would mean it is right."""
    return is_identity(sp.diff(dpo_loss_expr(), theta), dpo_gradient_formula(weight_sign=-1))


def slip_reward_without_log() -> bool:
    """Slip: r = beta pi*/pi_ref + beta log Z. Does it give back pi* = pi_ref exp(r/beta) / Z?"""
    wrong_reward = beta * (pi_w / ref_w) + beta * sp.log(Z)
    return is_identity(ref_w * sp.exp(wrong_reward / beta) / Z, pi_w)


def slip_divide_by_minus_beta_keeps_max() -> bool:
    """Slip: divide E[r] - beta KL by -beta and keep "max". Is pi* a maximum of the result?"""
    return _is_maximum_on_simplex(-1 / beta, 3)


def slip_offset_outside_sigmoid() -> bool:
    """Slip: ODPO as -log sigmoid(r_hat_w - r_hat_l) - Delta. Same gradient as the real ODPO loss?"""
    wrong_loss = dpo_loss_expr() - delta
    return is_identity(sp.diff(wrong_loss, theta), sp.diff(dpo_loss_expr(delta), theta))


def slip_partition_cancels_across_prompts() -> bool:
    """Slip: Z cancels also when y_w answers prompt x1 and y_l another prompt x2.

    Put r = beta log(pi/pi_ref) + beta log Z(x) into Bradley-Terry with Z(x1) for
    y_w and Z(x2) for y_l: is the result the DPO probability, free of Z?
    It is not: the factor (Z(x1)/Z(x2))^beta stays.
    """
    z_1, z_2 = sp.symbols("Z_1 Z_2", positive=True)
    reward_chosen = reward_from_policy(pi_w, ref_w).subs(Z, z_1)
    reward_rejected = reward_from_policy(pi_l, ref_l).subs(Z, z_2)
    return is_identity(bt_probability_exp(reward_chosen, reward_rejected), dpo_preference_probability())


def ties_start_weight() -> tuple[sp.Expr, sp.Symbol, sp.Symbol]:
    """ODPO's gradient weight at policy == reference for a pair with score gap g: sigma(alpha log g).

    Derived from the loss: the weight is -d/dm of -log sigmoid(m - Delta) at margin m = 0,
    with Delta = alpha log g (for a tie, g is odpo_offset's floor min_gap).
    """
    gap, alpha = sp.symbols("g alpha", positive=True)
    margin = sp.Symbol("m", real=True)
    weight = -sp.diff(-sp.log(sigmoid(margin - delta)), margin).subs(margin, 0)
    return sp.simplify(weight.subs(delta, alpha * sp.log(gap))), gap, alpha


def slip_tie_pulls_hardest() -> bool:
    """Slip: a tie, whose floored offset alpha log(min_gap) is the largest in size, pulls hardest.

    The course says the opposite (dpo_edu.losses.odpo_offset, notebook 07): a tie barely
    pulls. Is the start weight sigma(alpha log g) decreasing in the gap g? sympy decides
    the sign of its derivative; an undecided sign raises instead of returning False.
    """
    weight, gap, _ = ties_start_weight()
    slope = sp.simplify(sp.diff(weight, gap))
    if slope.is_positive is None and slope.is_negative is None:
        raise ArithmeticError(f"undecided: the sign of {slope}")
    return bool(slope.is_negative)


SLIPS = {
    "gradient weight sigmoid(r_hat_w - r_hat_l)": slip_gradient_weight,
    "implicit reward without the log": slip_reward_without_log,
    "divide by -beta, keep max": slip_divide_by_minus_beta_keeps_max,
    "ODPO offset outside the sigmoid": slip_offset_outside_sigmoid,
    "a tie (floored gap) pulls hardest": slip_tie_pulls_hardest,
    "Z cancels across two prompts": slip_partition_cancels_across_prompts,
}


def known_slips() -> dict[str, bool]:
    """Check each slip of docs/DESIGN.md ("Known slips") with the same machinery; each must come out False."""
    return {name: bool(check()) for name, check in SLIPS.items()}
