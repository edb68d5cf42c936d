import torch

from dpo_edu.bandit import kl_regularised_objective, optimal_policy


def test_optimal_policy_is_normalised_and_stable():
    generator = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(7, generator=generator, dtype=torch.float64), -1)
    rewards = torch.randn(7, generator=generator, dtype=torch.float64)
    for beta in (100.0, 1.0, 1e-4):
        policy = optimal_policy(ref, rewards, beta)
        assert torch.isfinite(policy).all() and abs(policy.sum().item() - 1) < 1e-12
    assert optimal_policy(ref, rewards, 1e-4).argmax() == rewards.argmax()
    assert torch.allclose(optimal_policy(ref, rewards, 1e6), ref, atol=1e-5)


def test_optimal_policy_beats_every_perturbation():
    generator = torch.Generator().manual_seed(1)
    ref = torch.softmax(torch.randn(5, generator=generator, dtype=torch.float64), -1)
    rewards = torch.randn(5, generator=generator, dtype=torch.float64)
    beta = 0.3
    best = kl_regularised_objective(optimal_policy(ref, rewards, beta), ref, rewards, beta)
    logits = torch.log(optimal_policy(ref, rewards, beta))
    for _ in range(200):
        other = torch.softmax(logits + 0.3 * torch.randn(5, generator=generator, dtype=torch.float64), -1)
        assert kl_regularised_objective(other, ref, rewards, beta) < best
    # and the maximum value is beta log Z
    log_partition = torch.logsumexp(torch.log(ref) + rewards / beta, -1)
    assert torch.allclose(best, beta * log_partition)
