"""The one place where run sizes live.

`DPO_EDU_PROFILE=smoke|full` (default `full`) picks a :class:`Profile`.
`smoke` runs the same code path with tiny sizes (CI, `make test`);
`full` is what a learner runs. Notebooks read their sizes from here,
never from literals of their own.
"""
from __future__ import annotations

import dataclasses
import os

PROFILE_ENV_VAR = "DPO_EDU_PROFILE"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    # 00 welcome: side of the square matrices in the device probe
    device_probe_size: int
    # 01 Bradley-Terry: simulated tournament
    bt_items: int
    bt_comparisons: int
    bt_sweep_comparisons: tuple[int, ...]  # fit error vs data size
    bt_sweep_repeats: int
    # 02 optimal policy: numeric optimiser on a small response space
    policy_responses: int
    policy_optimizer_steps: int
    policy_random_instances: int  # random (reward, ref) instances checked
    # 03 DPO loss: random instances for the sympy-vs-autograd gradient check
    gradient_check_batches: int
    gradient_check_batch_size: int
    toy_dpo_steps: int  # the 3-response DPO illustration at the end of 03
    # 04 log-probs: the memory comparison (V is the real model's vocabulary)
    memory_batch: int
    memory_steps: int
    # 05 bandit: tabular DPO against the closed-form optimum
    bandit_preferences: int
    bandit_steps: int
    bandit_betas: tuple[float, ...]  # the convergence figure and the TV check
    bandit_sweep_betas: tuple[float, ...]  # final TV vs beta
    bandit_overfit_steps: int  # deterministic preferences: DPO vs IPO


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        device_probe_size=256,
        bt_items=20,
        bt_comparisons=2_000,
        bt_sweep_comparisons=(200, 2_000),
        bt_sweep_repeats=1,
        policy_responses=5,
        policy_optimizer_steps=300,
        policy_random_instances=3,
        gradient_check_batches=2,
        gradient_check_batch_size=8,
        toy_dpo_steps=50,
        memory_batch=2,
        memory_steps=32,
        bandit_preferences=20_000,
        bandit_steps=300,
        bandit_betas=(0.3, 1.0, 3.0),
        bandit_sweep_betas=(0.1, 1.0, 10.0),
        bandit_overfit_steps=500,
    ),
    "full": Profile(
        name="full",
        device_probe_size=1024,
        bt_items=20,
        bt_comparisons=2_000,
        bt_sweep_comparisons=(100, 300, 1_000, 3_000, 10_000),
        bt_sweep_repeats=5,
        policy_responses=5,
        policy_optimizer_steps=2_000,
        policy_random_instances=20,
        gradient_check_batches=20,
        gradient_check_batch_size=64,
        toy_dpo_steps=50,
        memory_batch=16,
        memory_steps=128,
        bandit_preferences=20_000,
        bandit_steps=300,
        bandit_betas=(0.3, 1.0, 3.0),
        bandit_sweep_betas=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
        bandit_overfit_steps=2_000,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the profile named `name`, else the one in $DPO_EDU_PROFILE, else `full`.

    Raises ValueError naming the allowed values for an unknown name.
    """
    source = "argument"
    if name is None:
        name = os.environ.get(PROFILE_ENV_VAR, "full")
        source = f"${PROFILE_ENV_VAR}"
    key = name.strip().lower()
    if key not in PROFILES:
        allowed = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r} (from {source}); allowed: {allowed}")
    return PROFILES[key]
