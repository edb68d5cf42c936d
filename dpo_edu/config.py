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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile:
    """Every size a notebook or command reads, grouped by notebook. A field with a default is the same in both
    profiles; the profiles below list only the sizes that differ."""

    name: str
    # 00 welcome: side of the square matrices in the device probe
    device_probe_size: int
    # 01 Bradley-Terry: simulated tournament
    bt_items: int = 20
    bt_comparisons: int = 2_000
    bt_sweep_comparisons: tuple[int, ...]  # fit error vs data size
    bt_sweep_repeats: int
    # 02 optimal policy: numeric optimiser on a small response space
    policy_responses: int = 5
    policy_optimizer_steps: int
    policy_random_instances: int  # random (reward, ref) instances checked
    # 03 DPO loss: random instances for the sympy-vs-autograd gradient check
    gradient_check_batches: int
    gradient_check_batch_size: int
    toy_dpo_steps: int = 50  # the 3-response DPO illustration at the end of 03
    toy_long_steps: int = 1000  # 03: the same toy without the sigmoid weight, and SGD vs Adam
    # 04 log-probs: the memory comparison (V is the real model's vocabulary)
    memory_batch: int
    memory_steps: int
    # 05 bandit: tabular DPO against the closed-form optimum
    bandit_preferences: int = 20_000
    bandit_steps: int = 300
    bandit_betas: tuple[float, ...] = (0.3, 1.0, 3.0)  # the convergence figure and the TV check
    bandit_sweep_betas: tuple[float, ...]  # final TV vs beta
    bandit_overfit_steps: int  # deterministic preferences: DPO vs IPO
    bandit_frontier_betas: tuple[float, ...]  # the exact reward-KL frontier: DPO and ODPO on graded preferences
    # 06 full run (`dpo-edu run`): pairs from the reference, DPO, held-out evaluation
    run_train_prompts: int  # training openings used (of 640)
    run_samples_per_prompt: int = 4  # k completions sampled per opening
    run_pairing: str = "best_vs_worst"  # "best_vs_worst" or "all" (dpo_edu.generation.make_pairs)
    run_min_gap: float = 0.1  # pairs whose VADER scores differ by less are dropped
    run_max_new_tokens: int  # completion length, for pairs and evaluation alike
    run_heldout_prompts: int  # held-out openings evaluated (of 240)
    run_sample_batch_size: int  # rows per generate() call
    run_eval_every: int  # optimizer steps between held-out evaluations (and the last step)
    run_beta: float = 0.1
    run_learning_rate: float = 5e-5
    run_batch_size: int  # pairs per optimizer step
    run_epochs: int = 1
    run_warmup_steps: int
    run_max_length: int = 64  # tokens of prompt + completion
    run_max_prompt_length: int = 32
    run_seed: int = 0
    run_checkpoint_every: int  # optimizer steps between checkpoints (and one on Ctrl-C)
    # 07 ODPO and 10 rlhf: the reward-KL frontier (`dpo-edu frontier`); shares the run_* pairing and length settings
    frontier_train_prompts: int  # openings sampled for pairs, per seed
    # > 0 adds a "small data" setting: the first pairs only, trained for more epochs (0: all pairs only)
    frontier_small_pairs: int = 0
    frontier_heldout_prompts: int
    frontier_max_new_tokens: int
    frontier_batch_size: int = 4  # pairs per optimizer step (the sweep buys steps with smaller batches)
    frontier_learning_rate: float = 1e-4
    frontier_warmup_steps: int
    frontier_betas: tuple[float, ...]
    frontier_dense_betas: tuple[float, ...]  # --dense, for a GPU
    frontier_seeds: tuple[int, ...]
    frontier_eval_steps: tuple[int, ...]  # optimizer steps evaluated (and every run's last step): each run is a curve
    frontier_epochs: int = 1  # DPO, ODPO and Preferred-FT: passes over the pairs
    frontier_methods: tuple[str, ...] = ("dpo", "odpo")  # `dpo-edu frontier`'s default (--methods): notebook 07's sweep
    frontier_heldout_pair_prompts: int  # held-out prompts (after the evaluated ones) whose pairs measure the rewards
    frontier_matched_kls: tuple[float, ...]  # KLs (nats) at which curves are compared
    # 07 ODPO: its offset is alpha * log(scale * score gap): scale 10 makes VADER gaps >= 0.1 give offsets >= 0
    frontier_odpo_alpha: float = 1.0
    frontier_odpo_score_scale: float = 10.0
    odpo_eval_steps: tuple[int, ...]  # notebook 07's checkpoints and each run's last (its 30-minute budget)
    # 10 rlhf: the same engine with every method, DPO at its own betas
    rlhf_methods: tuple[str, ...] = ("dpo", "sft", "rloo", "rloo-gold", "bon", "bon-gold")
    rlhf_betas: tuple[float, ...] = (0.1,)
    frontier_sft_learning_rate: float = 1e-4  # Preferred-FT
    # the reward model; False: only the scalar head trains (a linear probe of the last token's features)
    frontier_rm_learning_rate: float
    frontier_rm_epochs: int
    frontier_rm_batch_size: int
    frontier_rm_train_body: bool = False
    frontier_rloo_beta: float = 0.05  # the per-sequence KL penalty inside RLOO's reward
    frontier_rloo_k: int  # samples per prompt
    frontier_rloo_prompts_per_step: int
    frontier_rloo_steps: int
    frontier_rloo_learning_rate: float = 1e-4  # as DPO's here: a CPU-budget rate
    frontier_bon_ns: tuple[int, ...]
    # 08 beyond: the variants on the bandit (label noise) and on the real model (DPO / RPO / SimPO), online vs offline DPO
    beyond_label_noise: tuple[float, ...]  # fractions of flipped labels on the bandit
    beyond_train_prompts: int  # openings per round of pairs (round 2 of online DPO uses the next as many)
    beyond_samples_per_prompt: int = 4
    beyond_max_new_tokens: int  # completion length, for pairs and evaluation alike
    beyond_heldout_prompts: int
    beyond_batch_size: int  # pairs per optimizer step
    beyond_epochs: int  # over each round's pairs
    beyond_warmup_steps: int
    beyond_learning_rate: float = 1e-4
    beyond_beta: float = 0.1  # DPO, RPO and the online/offline runs
    beyond_sft_weight: float = 1.0  # RPO's weight on the chosen NLL
    beyond_simpo_beta: float = 2.0  # SimPO's beta scales a per-token mean log-prob: an order larger than DPO's
    beyond_simpo_gamma: float = 0.5
    beyond_lora_rank: int = 16
    # 09 clinic: each symptom reproduced by changing one thing against one healthy run (dpo_edu.clinic)
    clinic_train_prompts: int  # openings sampled for the healthy run's pairs (best vs worst of k)
    clinic_heldout_prompts: int  # openings for held-out reward, KL, length and repetition
    clinic_heldout_pair_prompts: int  # further held-out openings whose pairs give the held-out DPO loss
    clinic_samples_per_prompt: int = 4
    clinic_max_new_tokens: int
    clinic_length_prompts: int  # chat prompts asking for one sentence: room to end with EOS
    clinic_length_max_new_tokens: int
    clinic_batch_size: int
    clinic_epochs: int = 2
    clinic_learning_rate: float = 1e-4  # a CPU-budget setting, like the full run's (notebook 09 says what is usual)
    clinic_learning_rates: tuple[float, ...] = (1e-6, 1e-3)  # the sweep, beside clinic_learning_rate
    clinic_beta: float = 0.1
    clinic_stall_steps: int  # steps of each ln 2 reproduction
    clinic_heldout_every: int  # optimizer steps between held-out DPO losses


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        device_probe_size=256,
        bt_sweep_comparisons=(200, 2_000),
        bt_sweep_repeats=1,
        policy_optimizer_steps=300,
        policy_random_instances=3,
        gradient_check_batches=2,
        gradient_check_batch_size=8,
        memory_batch=2,
        memory_steps=32,
        bandit_sweep_betas=(0.1, 1.0, 10.0),
        bandit_overfit_steps=500,
        bandit_frontier_betas=(1.0, 10.0, 100.0),
        run_train_prompts=16,
        run_max_new_tokens=8,
        run_heldout_prompts=8,
        run_eval_every=2,
        run_batch_size=4,
        run_warmup_steps=1,
        run_sample_batch_size=64,
        run_checkpoint_every=2,
        frontier_train_prompts=8,
        frontier_heldout_prompts=4,
        frontier_max_new_tokens=8,
        frontier_betas=(0.1, 0.5),
        frontier_dense_betas=(0.1, 0.3, 0.5),
        frontier_seeds=(0,),
        frontier_eval_steps=(1,),
        frontier_heldout_pair_prompts=4,
        frontier_matched_kls=(0.01,),
        frontier_rm_learning_rate=5e-5,
        frontier_rm_epochs=1,
        frontier_rm_batch_size=4,
        frontier_rloo_k=2,
        frontier_rloo_prompts_per_step=2,
        frontier_rloo_steps=2,
        frontier_bon_ns=(1, 2),
        frontier_warmup_steps=0,
        odpo_eval_steps=(1,),
        beyond_label_noise=(0.2,),
        beyond_train_prompts=4,
        beyond_max_new_tokens=8,
        beyond_heldout_prompts=4,
        beyond_batch_size=4,
        beyond_epochs=1,
        beyond_warmup_steps=0,
        clinic_train_prompts=6,
        clinic_heldout_prompts=4,
        clinic_heldout_pair_prompts=4,
        clinic_max_new_tokens=6,
        clinic_length_prompts=4,
        clinic_length_max_new_tokens=8,
        clinic_batch_size=2,
        clinic_stall_steps=2,
        clinic_heldout_every=1,
    ),
    "full": Profile(
        name="full",
        device_probe_size=1024,
        bt_sweep_comparisons=(100, 300, 1_000, 3_000, 10_000),
        bt_sweep_repeats=5,
        policy_optimizer_steps=2_000,
        policy_random_instances=20,
        gradient_check_batches=20,
        gradient_check_batch_size=64,
        memory_batch=16,
        memory_steps=128,
        bandit_sweep_betas=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
        bandit_overfit_steps=2_000,
        bandit_frontier_betas=(1.0, 3.0, 10.0, 30.0, 100.0),
        run_train_prompts=640,
        run_max_new_tokens=32,
        run_heldout_prompts=240,
        run_eval_every=40,  # steps 0 (the reference's own samples: free), 40 and 80: evaluation about a tenth of the run
        run_batch_size=8,
        run_warmup_steps=10,
        run_sample_batch_size=256,  # rows per decode step: 289 tokens/s against 245 at 128 and 276 at 512 (fp32, 2 cores)
        run_checkpoint_every=20,
        frontier_train_prompts=200,  # about 188 best-vs-worst pairs
        frontier_heldout_prompts=96,
        frontier_max_new_tokens=16,
        frontier_betas=(0.05, 5.0),  # the ends of the DPO paper's IMDb sweep, 100x apart (notebook 07)
        frontier_dense_betas=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        frontier_seeds=(0, 1),
        frontier_eval_steps=(4, 8, 16, 32),  # and each run's last step: every run is a curve
        frontier_heldout_pair_prompts=48,
        frontier_matched_kls=(0.5, 1.0, 2.0),
        # the reward model: a linear probe, early-stopped; trained through its body it memorised the pairs (train
        # accuracy 1.00, held-out 0.39 on 93 pairs, 2026-12-06)
        frontier_rm_learning_rate=3e-3,
        frontier_rm_epochs=6,
        frontier_rm_batch_size=16,
        frontier_rloo_k=4,
        frontier_rloo_prompts_per_step=8,
        frontier_rloo_steps=16,
        frontier_bon_ns=(1, 2, 4, 8, 16),
        frontier_warmup_steps=2,
        odpo_eval_steps=(4, 24),
        beyond_label_noise=(0.1, 0.2, 0.3),
        beyond_train_prompts=80,
        beyond_max_new_tokens=32,
        beyond_heldout_prompts=80,
        beyond_batch_size=8,
        beyond_epochs=2,
        beyond_warmup_steps=2,
        clinic_train_prompts=32,  # 32 pairs: 4 steps of 8 per epoch
        clinic_heldout_prompts=48,
        clinic_heldout_pair_prompts=24,
        clinic_max_new_tokens=24,
        clinic_length_prompts=24,
        clinic_length_max_new_tokens=48,  # the reference's one-sentence answers: 16 % reach it, EOS is within reach
        clinic_batch_size=8,
        clinic_stall_steps=4,
        clinic_heldout_every=2,
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
