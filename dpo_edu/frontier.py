"""The reward-KL frontier: DPO, ODPO and the pipeline DPO replaces, on one engine (`dpo-edu frontier`).

For each seed: sample preference pairs from the reference (as `dpo_edu.run` does) and draw the reference's own
answers to the held-out prompts once. Then every method starts from a fresh copy of the reference and is
evaluated at several checkpoints on those held-out prompts, so each run is a curve of (KL(policy || reference),
true reward) points:

    dpo, odpo    the pairs, one run per beta (`dpo_edu.train.train_dpo`)
    sft          Preferred-FT: the chosen replies only (`dpo_edu.sft.train_sft`)
    rloo         RL on notebook 02's objective against a reward model trained on the same pairs (`dpo_edu.rloo`)
    rloo-gold    the same RL against the true reward (VADER): the DPO paper's "PPO-GT"
    bon          best-of-N from the reference, picked by the reward model; KL from log N - (N-1)/N, an upper bound
    bon-gold     best-of-N picked by the true reward

Every point is also read as its gain over its own seed's reference (the same held-out prompts and the
reference's answers to them), and two curves are compared at matched KL, prompt by prompt and seed by seed
(`matched_kl`). The reward model, when a method needs one, is trained once per seed, and its held-out pair
accuracy and rank agreement with VADER are recorded beside DPO's implicit reward on the same pairs.

Writes to the output directory:

    frontier.jsonl        one line per evaluation: seed, setting, method, beta, step, kl, reward_mean, reward_gain, ...
    pairs_seed{S}.jsonl   each seed's pairs (read back by --resume)
    reward_model_seed{S}.json   the reward model's training and held-out measurements
    frontier.png          gain over the reference against KL: one curve per method (and beta)
    frontier.md           the tables and the figure
    summary.json          sizes, times, costs, the matched-KL comparisons (written last: the sweep is finished)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .best_of_n import best_of_n, check_ns
from .config import Profile
from .data import load_preferences, prompt_text, write_jsonl
from .evaluate import RewardEvaluator, format_kl, mean_and_se
from .generation import make_pairs, sample_completions
from .models import load_model
from .precision import resolve
from .prompts import load_prompts
from .reward_model import (
    RewardConfig,
    RewardModelFunction,
    implicit_pair_rewards,
    implicit_sample_rewards,
    pair_accuracy,
    rank_agreement,
    reward_model_from,
    score,
    spearman,
    train_reward_model,
)
from .rewards import rewards_of, sentiment
from .rloo import RLOOConfig, train_rloo
from .rundir import RunFolder
from .sft import SFTConfig, train_sft
from .stages import OpenRun, open_run, sample_pairs, train_config
from .train import TrainConfig, compute_pair_logps, pair_offsets, train_dpo
from .utils import device_name, get_device, seed_everything

METHODS = ("dpo", "odpo", "sft", "rloo", "rloo-gold", "bon", "bon-gold")
BETA_METHODS = ("dpo", "odpo")  # one run per beta of the sweep
NEEDS_REWARD_MODEL = ("rloo", "bon")
COLORS = {
    "dpo": "tab:blue",
    "odpo": "tab:orange",
    "sft": "tab:gray",
    "rloo": "tab:red",
    "rloo-gold": "tab:purple",
    "bon": "tab:green",
    "bon-gold": "tab:olive",
}
LABELS = {
    "dpo": "DPO",
    "odpo": "ODPO",
    "sft": "Preferred-FT",
    "rloo": "RLOO (reward model)",
    "rloo-gold": "RLOO (true reward)",
    "bon": "best-of-N (reward model)",
    "bon-gold": "best-of-N (true reward)",
}
ROW_LISTS = ("rewards",)  # per-prompt lists a row keeps (the rest are numbers)


def check_methods(methods) -> tuple[str, ...]:
    """The methods asked for, in the course's order; one clear line for an unknown one or none."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    names = [name.strip() for method in methods for name in method.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        problem = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise ValueError(f"{problem}; choose from {', '.join(METHODS)} (comma-separated)")
    return tuple(method for method in METHODS if method in names)


def label(method: str, beta) -> str:
    return LABELS[method] + (f" beta={beta:g}" if method in BETA_METHODS else "")


# ------------------------------------------------------------ what each run is


def settings_of(pairs: list[dict], profile: Profile) -> dict[str, tuple[list[dict], int]]:
    """{"all pairs": (pairs, epochs)}, and with `frontier_small_pairs` > 0 also "small data": (the first few pairs,
    proportionally more epochs), trained for the same number of steps."""
    settings = {"all pairs": (pairs, profile.frontier_epochs)}
    if profile.frontier_small_pairs:
        small = pairs[: profile.frontier_small_pairs]
        settings["small data"] = (small, profile.frontier_epochs * max(1, round(len(pairs) / len(small))))
    return settings


def setting_names(profile: Profile) -> tuple[str, ...]:
    return ("all pairs", "small data") if profile.frontier_small_pairs else ("all pairs",)


def run_keys(profile: Profile, methods, betas) -> list[tuple]:
    """(seed, setting, method, beta) of every run of the sweep; beta is None where a method has none."""
    keys = []
    for seed in profile.frontier_seeds:
        for method in methods:
            if method in BETA_METHODS:
                keys += [(seed, setting, method, beta) for setting in setting_names(profile) for beta in betas]
            else:
                keys.append((seed, "all pairs", method, profile.frontier_rloo_beta if "rloo" in method else None))
    return keys


def frontier_config(
    profile: Profile, method: str, beta: float, seed: int, epochs: int, precision: str = "auto"
) -> TrainConfig:
    """The full run's trainer settings (`dpo_edu.stages.train_config`) with the sweep's own beta, rate, batch, warm-up and method."""
    return train_config(
        profile,
        beta=beta,
        learning_rate=profile.frontier_learning_rate,
        batch_size=profile.frontier_batch_size,
        epochs=epochs,
        warmup_steps=profile.frontier_warmup_steps,
        odpo_alpha=profile.frontier_odpo_alpha if method == "odpo" else None,
        odpo_score_scale=profile.frontier_odpo_score_scale,
        seed=seed,
        mixed_precision=precision,
    )


def sft_config(profile: Profile, seed: int, precision: str = "auto") -> SFTConfig:
    return SFTConfig(
        learning_rate=profile.frontier_sft_learning_rate,
        batch_size=profile.frontier_batch_size,
        epochs=profile.frontier_epochs,
        warmup_steps=profile.frontier_warmup_steps,
        max_length=profile.run_max_length,
        max_prompt_length=profile.run_max_prompt_length,
        mixed_precision=precision,
        seed=seed,
    )


def rloo_config(profile: Profile, seed: int, precision: str = "auto") -> RLOOConfig:
    return RLOOConfig(
        beta=profile.frontier_rloo_beta,
        k=profile.frontier_rloo_k,
        prompts_per_step=profile.frontier_rloo_prompts_per_step,
        steps=profile.frontier_rloo_steps,
        max_new_tokens=profile.frontier_max_new_tokens,
        learning_rate=profile.frontier_rloo_learning_rate,
        sample_batch_size=profile.run_sample_batch_size,
        mixed_precision=precision,
        seed=seed,
    )


def reward_config(profile: Profile, seed: int, precision: str = "auto") -> RewardConfig:
    return RewardConfig(
        learning_rate=profile.frontier_rm_learning_rate,
        batch_size=profile.frontier_rm_batch_size,
        epochs=profile.frontier_rm_epochs,
        max_length=profile.run_max_length,
        train_body=profile.frontier_rm_train_body,
        mixed_precision=precision,
        seed=seed,
    )


def check_settings(profile: Profile, methods, betas, precision: str) -> None:
    """Every run's configuration, built once before any work: a bad setting fails here, in one line."""
    for method in methods:
        if method in BETA_METHODS:
            for beta in betas:
                frontier_config(profile, method, beta, 0, 1, precision)
        elif method == "sft":
            sft_config(profile, 0, precision)
        elif method.startswith("rloo"):
            rloo_config(profile, 0, precision)
        else:
            check_ns(profile.frontier_bon_ns)
    if any(method.startswith(needs) for needs in NEEDS_REWARD_MODEL for method in methods):
        reward_config(profile, 0, precision)


# ------------------------------------------------------------ the sweep


def frontier(
    profile: Profile | str | None = None,
    out: str | Path = "runs/frontier",
    *,
    methods=None,
    betas=None,
    eval_steps=None,
    dense: bool = False,
    model=None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    precision: str | None = None,
    log=print,
) -> dict:
    """Run every method x beta x seed, evaluating checkpoints; return the summary (also in out/summary.json).

    `methods`: names of METHODS (a list or "dpo,rloo"); None: the profile's `frontier_methods`. `betas`: DPO's and
    ODPO's betas; None: the profile's `frontier_betas` (`dense=True`: `frontier_dense_betas`, for a GPU).
    `eval_steps`: the training steps evaluated besides each run's last; None: the profile's `frontier_eval_steps`.
    Each evaluation is appended to out/frontier.jsonl as it happens; after an interruption, `resume=True` keeps
    the runs that finished (and each seed's pairs) and does the rest, with the options the sweep was started with.
    `precision`: as for `dpo_edu.run.run` (auto: bf16 where the hardware has it). `log`: where progress lines go
    (None: nowhere).
    """
    log = log or (lambda line: None)
    methods = None if methods is None else list(check_methods(methods))
    betas = None if betas is None else [float(beta) for beta in betas]
    eval_steps = None if eval_steps is None else [int(step) for step in eval_steps]
    with open_run(
        out,
        "frontier",
        profile,
        model,
        overwrite=overwrite,
        resume=resume,
        precision=precision,
        dense=dense,
        methods=methods,
        betas=betas,
        eval_steps=eval_steps,
    ) as opened:  # locked until the sweep ends
        profile, options = opened.profile, opened.options
        methods = check_methods(options["methods"] or profile.frontier_methods)
        dense = options["dense"]
        betas = tuple(options["betas"] or (profile.frontier_dense_betas if dense else profile.frontier_betas))
        eval_steps = tuple(options["eval_steps"] or profile.frontier_eval_steps)
        check_settings(profile, methods, betas, opened.precision)  # fail before the model loads
        return _frontier(opened, methods, betas, eval_steps, progress=progress, log=log)


def _frontier(opened: OpenRun, methods, betas, eval_steps, *, progress: bool, log) -> dict:
    started = time.perf_counter()
    device = get_device()
    reference, tokenizer = opened.load(device)
    reference.eval().requires_grad_(False)
    opened.start(
        dense=opened.options["dense"],
        precision=opened.precision,
        methods=list(methods),
        betas=list(betas),
        eval_steps=list(eval_steps),
    )
    folder, profile, precision = opened.folder, opened.profile, opened.precision
    try:
        rows = _sweep(
            profile,
            methods,
            betas,
            eval_steps,
            folder,
            reference,
            tokenizer,
            opened.model_source,
            device,
            resume=opened.resume,
            precision=precision,
            progress=progress,
            log=log,
        )
    except BaseException:
        folder.abandon()  # nothing once a seed's pairs are written; before that, the folder goes and a replaced one comes back
        raise
    summary = summarize(rows, profile, folder.path, methods=methods, betas=betas)
    summary.update(
        device=device_name(device),
        precision=resolve(precision, device),
        resumed=opened.resume,
        seconds=time.perf_counter() - started,
    )
    figure = plot_frontier(rows)
    figure.savefig(folder.path / "frontier.png", dpi=110)
    (folder.path / "frontier.md").write_text(markdown_table(summary), encoding="utf-8")
    (folder.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last: finished
    log(f"done in {summary['seconds']:.0f} s; see {folder.path / 'frontier.md'}")
    return summary


def _key(row: dict) -> tuple:
    return row["seed"], row["setting"], row["method"], row["beta"]


def finished_rows(path: Path) -> list[dict]:
    """The rows of frontier.jsonl that belong to runs which finished (their last row says "final")."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    finished = {_key(row) for row in rows if row.get("final")}
    return [row for row in rows if _key(row) in finished]


def _seed_pairs(
    reference, tokenizer, prompts: list[str], profile: Profile, seed: int, path: Path, precision: str = "auto"
) -> list[dict]:
    """The seed's preference pairs: read back from `path` when a resumed sweep already wrote them, else sampled and written."""
    if path.is_file():
        return load_preferences(path, require_scores=True, log=None)
    pairs, _ = sample_pairs(
        reference,
        tokenizer,
        prompts,
        sentiment,
        per_prompt=profile.run_samples_per_prompt,
        max_new_tokens=profile.frontier_max_new_tokens,
        batch_size=profile.run_sample_batch_size,
        seed=seed,
        rule=profile.run_pairing,
        min_gap=profile.run_min_gap,
        precision=precision,
    )
    write_jsonl(pairs, path)
    return pairs


class Seed:
    """What every run of one seed shares: its pairs, the held-out evaluator (the reference's answers drawn once),
    and, made when first needed, the reward model and the held-out pairs that measure it."""

    def __init__(self, profile: Profile, seed: int, folder: Path, reference, tokenizer, precision: str, log) -> None:
        self.profile, self.seed, self.folder = profile, seed, folder
        self.reference, self.tokenizer = reference, tokenizer
        self.precision, self.log = precision, log
        self.train_prompts = load_prompts("train")[: profile.frontier_train_prompts]
        heldout = load_prompts("heldout")
        self.heldout_prompts = heldout[: profile.frontier_heldout_prompts]
        self.pair_prompts = heldout[profile.frontier_heldout_prompts :][: profile.frontier_heldout_pair_prompts]
        seed_everything(seed)
        self.pairs = _seed_pairs(
            reference, tokenizer, self.train_prompts, profile, seed, folder / f"pairs_seed{seed}.jsonl", precision
        )
        self.evaluator = RewardEvaluator(
            reference,
            tokenizer,
            self.heldout_prompts,
            sentiment,
            max_new_tokens=profile.frontier_max_new_tokens,
            batch_size=profile.run_sample_batch_size,
            seed=seed,
            precision=precision,
            reference=reference,
        )
        self._reward_model = self._heldout = self._best_of_n = None
        self._reference_logps: dict[str, tuple] = {}

    def reference_logps(self, setting: str, pairs: list[dict], config: TrainConfig) -> tuple:
        if setting not in self._reference_logps:
            self._reference_logps[setting] = compute_pair_logps(self.reference, self.tokenizer, pairs, config)
        return self._reference_logps[setting]

    def heldout(self):
        """(pairs, samples, true rewards) on held-out prompts never evaluated or trained on: k fresh samples each."""
        if self._heldout is None:
            texts = [prompt_text(self.tokenizer, prompt) for prompt in self.pair_prompts]
            samples = sample_completions(
                self.reference,
                self.tokenizer,
                texts,
                per_prompt=self.profile.run_samples_per_prompt,
                max_new_tokens=self.profile.frontier_max_new_tokens,
                batch_size=self.profile.run_sample_batch_size,
                seed=self.seed + 3,
                precision=self.precision,
            )
            truth = rewards_of(sentiment, [p for p in texts for _ in range(samples.per_prompt)], samples.texts)
            pairs, _ = make_pairs(
                samples,
                truth,
                rule=self.profile.run_pairing,
                min_gap=self.profile.run_min_gap,
                tokenizer=self.tokenizer,
            )
            self._heldout = pairs, samples, truth
        return self._heldout

    def best_of_n_draw(self):
        """(samples, their true rewards, seconds): max(N) answers of the reference to each held-out prompt, drawn
        once per seed and shared by best-of-N picked by the reward model and by the true reward."""
        if self._best_of_n is None:
            clock = time.perf_counter()
            texts = [prompt_text(self.tokenizer, prompt) for prompt in self.heldout_prompts]
            samples = sample_completions(
                self.reference,
                self.tokenizer,
                texts,
                per_prompt=max(check_ns(self.profile.frontier_bon_ns)),
                max_new_tokens=self.profile.frontier_max_new_tokens,
                batch_size=self.profile.run_sample_batch_size,
                seed=self.seed + 4,
                precision=self.precision,
            )
            truth = rewards_of(sentiment, samples_prompts(samples), samples.texts)
            self._best_of_n = samples, truth, time.perf_counter() - clock
        return self._best_of_n

    def reward_model(self):
        """The Bradley-Terry reward model trained on this seed's pairs (once), with its record written to
        reward_model_seed{S}.json: training time, last-epoch loss and accuracy, held-out pair accuracy and
        rank agreement with VADER on fresh samples."""
        if self._reward_model is None:
            clock = time.perf_counter()
            model = reward_model_from(self.reference, self.tokenizer, seed=self.seed)
            config = reward_config(self.profile, self.seed, self.precision)
            history = train_reward_model(model, self.tokenizer, self.pairs, config)
            seconds = time.perf_counter() - clock
            model.eval().requires_grad_(False)
            pairs, samples, truth = self.heldout()
            prompts = [pair["prompt"] for pair in pairs]
            measured = measure_reward(
                score(model, self.tokenizer, prompts, [pair["chosen"] for pair in pairs]),
                score(model, self.tokenizer, prompts, [pair["rejected"] for pair in pairs]),
                score(model, self.tokenizer, samples_prompts(samples), samples.texts),
                truth,
                samples.per_prompt,
            )
            last_epoch = history[-max(1, len(history) // config.epochs) :]
            record = {
                "seed": self.seed,
                "pairs": len(self.pairs),
                "steps": len(history),
                "seconds": seconds,
                "train_loss": statistics.fmean(r["loss"] for r in last_epoch),
                "train_accuracy": statistics.fmean(r["accuracy"] for r in last_epoch),
                "heldout": measured,
                "heldout_pairs": len(pairs),
                "samples": len(samples.texts),
            }
            (self.folder / f"reward_model_seed{self.seed}.json").write_text(
                json.dumps(record, indent=1) + "\n", encoding="utf-8"
            )
            self.log(
                f"seed {self.seed} reward model: held-out pair accuracy {measured['accuracy']:.3f} "
                f"({len(pairs)} pairs), Spearman with VADER within prompts {measured['spearman_within']:+.3f} "
                f"({seconds:.0f} s)"
            )
            self._reward_model = RewardModelFunction(
                model,
                self.tokenizer,
                batch_size=self.profile.run_sample_batch_size,
                max_length=self.profile.run_max_length,
                precision=self.precision,
            )
        return self._reward_model


# What each method holds while it trains (or answers), besides the model it trains: DPO needs only the reference's
# log-probs of its pairs, computed once before training; RLOO samples, so it keeps the reference model (the KL
# penalty) and the reward model it is scored by; best-of-N trains nothing but scores N answers per prompt.
MODELS_HELD = {
    "dpo": "policy",
    "odpo": "policy",
    "sft": "policy",
    "rloo": "policy, reference, reward model",
    "rloo-gold": "policy, reference",
    "bon": "reference, reward model",
    "bon-gold": "reference",
}


def _sweep(
    profile: Profile,
    methods,
    betas,
    eval_steps,
    folder: RunFolder,
    reference,
    tokenizer,
    model,
    device,
    *,
    resume: bool,
    precision: str,
    progress: bool,
    log,
) -> list[dict]:
    """Train and evaluate every run not yet finished; append each row to frontier.jsonl as it is made; return all rows."""
    out = folder.path
    rows_path = out / "frontier.jsonl"
    rows = finished_rows(rows_path) if resume else []
    write_jsonl(rows, rows_path)  # a resumed sweep drops the rows of the run it was in the middle of
    done = {_key(row) for row in rows}
    todo = [key for key in run_keys(profile, methods, betas) if key not in done]
    log(
        f"frontier on {device_name(device)} ({resolve(precision, device)}), profile "
        f"{profile.name}: {len(todo)} runs to do"
        + (f" ({len(done)} finished before)" if done else "")
        + f"; methods {', '.join(methods)}; seeds {list(profile.frontier_seeds)}"
    )
    with rows_path.open("a", encoding="utf-8") as rows_file:

        def record(row: dict) -> None:
            rows.append(row)
            rows_file.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows_file.flush()

        for seed in profile.frontier_seeds:
            keys = [key for key in todo if key[0] == seed]
            if not keys:
                continue
            context = Seed(profile, seed, out, reference, tokenizer, precision, log)
            folder.keep()  # the sweep's first result is on disk
            for key in keys:
                clock = time.perf_counter()
                _run(context, key, eval_steps, model, device, record, progress=progress)
                final = rows[-1]
                log(
                    f"seed {seed} {label(key[2], key[3]):>28}: gain {final['reward_gain']:+.3f} ± "
                    f"{final['reward_gain_se']:.3f}, {format_kl(final['kl'], final['kl_se'])} at step {final['step']} "
                    f"({time.perf_counter() - clock:.0f} s)"
                )
    return rows


def _result_row(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("samples", "lengths")}


TRAINING_KEYS = {
    "loss": "train_loss",
    "rewards/chosen": "rewards/chosen",
    "rewards/rejected": "rewards/rejected",
    "reward": "train_reward",
    "kl": "train_kl",
}


def _run(context: Seed, key: tuple, eval_steps, model, device, record, *, progress: bool) -> None:
    """One run: the reference's point (step 0), then the method's checkpoints; the last row says "final"."""
    seed, setting, method, beta = key
    profile, evaluator = context.profile, context.evaluator
    run = {"seed": seed, "setting": setting, "method": method, "beta": beta}
    reference_point = {
        **run,
        "step": 0,
        **_result_row(evaluator.measure(None, policy_is_reference=True)),  # its own answers: KL 0, gain 0
        "seconds_train": 0.0,
        "samples_drawn": 0,
    }
    if method.startswith("bon"):
        _best_of_n(context, run, reference_point, record)
        return
    record(reference_point)
    reward_fn = context.reward_model() if method == "rloo" else sentiment  # trained once per seed, timed on its own
    policy, _ = load_model(model, device=device)  # a fresh copy of the reference
    eval_steps = set(eval_steps)
    clock = {"start": time.perf_counter(), "evaluating": 0.0}
    samples_per_step = profile.frontier_rloo_prompts_per_step * profile.frontier_rloo_k if "rloo" in method else 0

    def checkpoint(step_record: dict):
        step, last = step_record["step"], step_record["step"] == step_record["steps_total"]
        if step not in eval_steps and not last:
            return None
        evaluating = time.perf_counter()
        result = _result_row(evaluator.measure(policy))
        # what the training step logged: DPO's last batch, RLOO's own samples
        extra = {kept: step_record[name] for name, kept in TRAINING_KEYS.items() if name in step_record}
        seconds_train = evaluating - clock["start"] - clock["evaluating"]
        row = {
            **run,
            "step": step,
            **result,
            **extra,
            "seconds_train": seconds_train,
            "samples_drawn": step * samples_per_step,
        }
        if last:
            row.update(_final_extras(context, method, policy, beta), final=True)
        clock["evaluating"] += time.perf_counter() - evaluating
        record(row)
        return None

    if method in BETA_METHODS:
        pairs, epochs = settings_of(context.pairs, profile)[setting]
        config = frontier_config(profile, method, beta, seed, epochs, context.precision)
        train_dpo(
            policy,
            context.tokenizer,
            pairs,
            config,
            on_step=checkpoint,
            progress=progress,
            reference=context.reference_logps(setting, pairs, config),
            log=None,
        )
    elif method == "sft":
        train_sft(
            policy,
            context.tokenizer,
            context.pairs,
            sft_config(profile, seed, context.precision),
            on_step=checkpoint,
            progress=progress,
            log=None,
        )
    else:
        train_rloo(
            policy,
            context.tokenizer,
            context.train_prompts,
            reward_fn,
            rloo_config(profile, seed, context.precision),
            reference=context.reference,
            on_step=checkpoint,
            progress=progress,
        )


def samples_prompts(samples) -> list[str]:
    """The prompt of every sample: (N,) from `samples.prompts` (P,), `per_prompt` consecutive samples each."""
    return [samples.prompts[i // samples.per_prompt] for i in range(len(samples.texts))]


def measure_reward(chosen, rejected, on_samples, truth, per_prompt: int) -> dict:
    """A reward read as a reward model: held-out pair accuracy and margin (`pair_accuracy`), the mean reward of the
    chosen and of the rejected replies, and rank agreement with the true reward on fresh samples (`rank_agreement`).
    chosen, rejected (P,); on_samples, truth (N,), `per_prompt` consecutive samples per prompt."""
    chosen, rejected = torch.as_tensor(chosen).tolist(), torch.as_tensor(rejected).tolist()
    return {
        **pair_accuracy(chosen, rejected),
        "chosen": statistics.fmean(chosen),
        "rejected": statistics.fmean(rejected),
        **rank_agreement(torch.as_tensor(on_samples).tolist(), list(truth), per_prompt),
    }


def _final_extras(context: Seed, method: str, policy, beta) -> dict:
    """What a DPO or ODPO run's last checkpoint adds: its implicit reward beta * log(pi / pi_ref) read as a reward
    model on the seed's held-out pairs (never trained on; both sides of the margin) and fresh samples."""
    if method not in BETA_METHODS or context.profile.frontier_heldout_pair_prompts == 0:
        return {}
    pairs, samples, truth = context.heldout()
    chosen, rejected = implicit_pair_rewards(
        policy,
        context.reference,
        context.tokenizer,
        pairs,
        beta,
        max_length=context.profile.run_max_length,
        max_prompt_length=context.profile.run_max_prompt_length,
    )
    on_samples = implicit_sample_rewards(policy, context.reference, context.tokenizer, samples, beta)
    return {
        "heldout_pairs": len(pairs),
        "implicit": measure_reward(chosen, rejected, on_samples, truth, samples.per_prompt),
    }


def _best_of_n(context: Seed, run: dict, reference_point: dict, record) -> None:
    """Best-of-N on the held-out prompts (`Seed.best_of_n_draw`): the true reward of the pick for every N, its gain
    over the seed's reference answer, and KL <= log N - (N-1)/N."""
    samples, truth, seconds = context.best_of_n_draw()
    clock = time.perf_counter()
    per_prompt = samples.per_prompt
    if run["method"] == "bon-gold":
        selection = truth
    else:
        selection = rewards_of(context.reward_model(), samples_prompts(samples), samples.texts)
    results = best_of_n(selection, truth, per_prompt, context.profile.frontier_bon_ns)
    seconds += time.perf_counter() - clock
    reference_rewards = reference_point["rewards"]
    record(reference_point)
    for number, result in enumerate(results):
        gains = [r - ref for r, ref in zip(result["rewards"], reference_rewards)]
        gain, gain_se = mean_and_se(gains)
        wins = sum((g > 0) + 0.5 * (g == 0) for g in gains) / len(gains)
        record(
            {
                **run,
                "step": result["n"],
                "n": result["n"],
                "kl": result["kl_bound"],
                "kl_se": 0.0,
                "kl_bound": True,
                "reward_mean": result["reward_mean"],
                "reward_se": result["reward_se"],
                "reward_gain": gain,
                "reward_gain_se": gain_se,
                "win_rate": wins,
                "rewards": result["rewards"],
                "seconds_train": seconds,
                "samples_drawn": result["n"] * len(reference_rewards),
                **({"final": True} if number == len(results) - 1 else {}),
            }
        )


# ------------------------------------------------------------ reading the rows


def curves(rows: list[dict]) -> dict[tuple, dict[int, list[dict]]]:
    """{(setting, method, beta): {seed: that run's rows by step (the reference's point first)}}."""
    out: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        out.setdefault((row["setting"], row["method"], row["beta"]), {}).setdefault(row["seed"], []).append(row)
    for by_seed in out.values():
        for seed_rows in by_seed.values():
            seed_rows.sort(key=lambda row: row["step"])
    return out


def interpolate(points: list[dict], kl: float) -> list[float] | None:
    """Each prompt's reward on the curve `points` (rows by step, each with "kl" and "rewards") at KL `kl`: linear
    between the first two consecutive checkpoints whose KLs bracket it; None outside the curve (no extrapolation)."""
    for left, right in zip(points, points[1:]):
        low, high = sorted((left["kl"], right["kl"]))
        if low <= kl <= high:
            weight = 0.0 if high == low else (kl - left["kl"]) / (right["kl"] - left["kl"])
            return [(1 - weight) * a + weight * b for a, b in zip(left["rewards"], right["rewards"])]
    return None


def matched_kl(rows: list[dict], curve_a: tuple, curve_b: tuple, kls) -> list[dict]:
    """Curve a's true reward minus curve b's at each KL of `kls` that both reach in every seed: per prompt and seed,
    each curve read off between its checkpoints (`interpolate`); the mean over (seed, prompt) with its standard
    error, each seed's own mean, and "separated": |mean| > 2 SE and every seed on the mean's side.
    Curves are (setting, method, beta) keys of `curves`."""
    by_curve = curves(rows)
    a, b = by_curve.get(curve_a, {}), by_curve.get(curve_b, {})
    seeds = sorted(set(a) & set(b))
    out = []
    for kl in kls:
        differences, per_seed = [], {}
        for seed in seeds:
            ra, rb = interpolate(a[seed], kl), interpolate(b[seed], kl)
            if ra is None or rb is None:
                break
            seed_differences = [x - y for x, y in zip(ra, rb, strict=True)]
            per_seed[seed] = statistics.fmean(seed_differences)
            differences += seed_differences
        else:
            if not seeds:
                continue
            mean, se = mean_and_se(differences)
            same_side = all((value > 0) == (mean > 0) for value in per_seed.values())
            out.append(
                {
                    "kl": kl,
                    "difference": mean,
                    "se": se,
                    "n": len(differences),
                    "per_seed": per_seed,
                    "separated": bool(abs(mean) > 2 * se and same_side),
                }
            )
    return out


def pooled(rows_at_step: list[dict]) -> dict:
    """One checkpoint over seeds: mean KL and its half range; the mean over seeds of each seed's gain over its own
    reference, with the standard error of that mean (each seed's SE over prompts, combined)."""
    kls = [row["kl"] for row in rows_at_step]
    gain = statistics.fmean(row["reward_gain"] for row in rows_at_step)
    se = math.sqrt(sum(row["reward_gain_se"] ** 2 for row in rows_at_step)) / len(rows_at_step)
    return {
        "kl": statistics.fmean(kls),
        "kl_spread": (max(kls) - min(kls)) / 2,
        "gain": gain,
        "gain_se": se,
        "reward": statistics.fmean(row["reward_mean"] for row in rows_at_step),
        "seeds": len(rows_at_step),
    }


def curve_table(rows: list[dict]) -> list[dict]:
    """Every curve's checkpoints pooled over seeds (`pooled`), the i-th checkpoint of each seed together: seeds
    evaluate the same steps, but a run's last step depends on its number of pairs (47 and 48 steps, say), so
    "step" is the largest of the seeds' steps at that checkpoint. Checkpoints that not every seed reached are left
    out."""
    table = []
    for (setting, method, beta), by_seed in curves(rows).items():
        for index in range(min(len(seed_rows) for seed_rows in by_seed.values())):
            at_index = [seed_rows[index] for seed_rows in by_seed.values()]
            table.append(
                {
                    "setting": setting,
                    "method": method,
                    "beta": beta,
                    "step": max(row["step"] for row in at_index),
                    **pooled(at_index),
                }
            )
    return table


def kl_span(rows: list[dict]) -> dict:
    """The smallest and the largest KL of the non-reference checkpoints (seed means), and their ratio."""
    kls = [row["kl"] for row in curve_table(rows) if row["step"] > 0 and row["kl"] > 0]
    low, high = (min(kls), max(kls)) if kls else (math.nan, math.nan)
    return {"min": low, "max": high, "ratio": high / low if kls else math.nan}


def plot_frontier(rows: list[dict]) -> Figure:
    """Gain in held-out true reward over each seed's reference against KL(policy || reference): one line per
    curve through its checkpoints (seed means, ±1.96 SE of the gain, ± half the KL's range over seeds); best-of-N
    dashed, at its KL bound."""
    table = curve_table(rows)
    settings = list(dict.fromkeys(row["setting"] for row in table))
    figure = Figure(figsize=(7.5 * len(settings), 5), layout="constrained")
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    betas = sorted({row["beta"] for row in table if row["method"] in BETA_METHODS})
    markers = dict(zip(betas, "os^Dv<>p*h"))
    for axis, setting in zip(axes, settings):
        for method, beta in dict.fromkeys((r["method"], r["beta"]) for r in table if r["setting"] == setting):
            points = [r for r in table if (r["setting"], r["method"], r["beta"]) == (setting, method, beta)]
            axis.errorbar(
                [p["kl"] for p in points],
                [p["gain"] for p in points],
                xerr=[p["kl_spread"] for p in points],
                yerr=[1.96 * p["gain_se"] for p in points],
                fmt=("--" if method.startswith("bon") else "-") + markers.get(beta, "o"),
                color=COLORS[method],
                capsize=2,
                markersize=4,
                linewidth=1.2,
                label=label(method, beta),
            )
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set(
            title=f"{setting}: mean over seeds, 95 % intervals",
            xlabel="KL(policy || reference), nats",
            ylabel="held-out reward gain over the reference (VADER)",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    return figure


def final_table(rows: list[dict]) -> list[dict]:
    """The last checkpoint of each (setting, method, beta): seed means and half-ranges."""
    last: dict[tuple, list[dict]] = {}
    for key, row in final_rows(rows).items():
        last.setdefault((key[1], key[2], key[3]), []).append(row)
    return [
        {
            "setting": setting,
            "method": method,
            "beta": beta,
            "seeds": len(group),
            "step": max(r["step"] for r in group),
            "reward": statistics.fmean(r["reward_mean"] for r in group),
            "reward_spread": _spread([r["reward_mean"] for r in group]),
            "gain": statistics.fmean(r.get("reward_gain", math.nan) for r in group),
            "kl": statistics.fmean(r["kl"] for r in group),
            "kl_spread": _spread([r["kl"] for r in group]),
            "win_rate": statistics.fmean(r["win_rate"] for r in group),
        }
        for (setting, method, beta), group in last.items()
    ]


def _spread(values: list[float]) -> float:
    """Half the range across seeds (0 for one seed)."""
    return (max(values) - min(values)) / 2 if values else math.nan


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
    """{(seed, setting, method, beta): that run's last checkpoint}."""
    last: dict[tuple, dict] = {}
    for row in rows:
        if row["step"] >= last.get(_key(row), {"step": -1})["step"]:
            last[_key(row)] = row
    return last


def beta_orders_kl(rows: list[dict]) -> list[dict]:
    """Per setting and beta-swept method: Spearman(beta, final KL) for each seed, and its mean over seeds.

    -1 means a larger beta always ended closer to the reference: beta orders the KL, as the KL-regularised
    objective says it should.
    """
    last = {key: row for key, row in final_rows(rows).items() if key[2] in BETA_METHODS}
    out = []
    for setting, method in dict.fromkeys((key[1], key[2]) for key in last):
        per_seed = {}
        for seed in sorted({key[0] for key in last if key[1:3] == (setting, method)}):
            runs = sorted((key[3], row["kl"]) for key, row in last.items() if key[:3] == (seed, setting, method))
            if len(runs) >= 2:
                per_seed[seed] = spearman([beta for beta, _ in runs], [kl for _, kl in runs])
        if per_seed:
            out.append(
                {
                    "setting": setting,
                    "method": method,
                    "per_seed": per_seed,
                    "mean": statistics.fmean(per_seed.values()),
                }
            )
    return out


def odpo_minus_dpo(rows: list[dict]) -> list[dict]:
    """ODPO's held-out reward minus DPO's at the same seed, beta and (last) step, paired over prompts.

    Per setting: each prompt's difference is averaged over the matched (seed, beta) runs; the mean of those over
    prompts comes with a 95 % interval (1.96 standard errors over prompts). Also per beta (seed means): the reward
    and the KL difference, for reading the frontier at matched KL.
    """
    last = final_rows(rows)
    out = []
    for setting in dict.fromkeys(key[1] for key in last):
        matched = [
            (row, last[(seed, st, "odpo", beta)])
            for (seed, st, method, beta), row in last.items()
            if st == setting and method == "dpo" and (seed, st, "odpo", beta) in last
        ]
        matched = [(d, o) for d, o in matched if "rewards" in d and "rewards" in o]
        if not matched:
            continue
        per_prompt = [
            statistics.fmean(o["rewards"][i] - d["rewards"][i] for d, o in matched)
            for i in range(len(matched[0][0]["rewards"]))
        ]
        mean = statistics.fmean(per_prompt)
        half = 1.96 * statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else math.nan
        by_beta = {}
        for d, o in matched:
            by_beta.setdefault(d["beta"], []).append((o["reward_mean"] - d["reward_mean"], o["kl"] - d["kl"]))
        out.append(
            {
                "setting": setting,
                "runs": len(matched),
                "prompts": len(per_prompt),
                "reward": mean,
                "ci95": half,
                "by_beta": [
                    {
                        "beta": beta,
                        "reward": statistics.fmean(r for r, _ in diffs),
                        "kl": statistics.fmean(k for _, k in diffs),
                    }
                    for beta, diffs in sorted(by_beta.items())
                ],
            }
        )
    return out


def offset_stats(pairs: list[dict], alpha: float, scale: float) -> dict:
    """How ODPO's offsets fall on these pairs: the share above 0 (stricter than DPO), below 0 (laxer), and quantiles."""
    offsets = sorted(pair_offsets(pairs, alpha, scale).tolist())
    return {
        "pairs": len(offsets),
        "positive": sum(o > 0 for o in offsets) / len(offsets),
        "negative": sum(o < 0 for o in offsets) / len(offsets),
        "min": offsets[0],
        "median": offsets[len(offsets) // 2],
        "max": offsets[-1],
    }


def costs(rows: list[dict]) -> list[dict]:
    """Per method (and beta): mean over seeds of the run's training seconds (evaluations excluded), samples drawn
    while training (best-of-N: at answer time, N per prompt), and the models it holds (`MODELS_HELD`)."""
    out = []
    for key, group in _by_curve_final(rows).items():
        out.append(
            {
                "setting": key[0],
                "method": key[1],
                "beta": key[2],
                "steps": max(r["step"] for r in group),
                "seconds_train": statistics.fmean(r["seconds_train"] for r in group),
                "samples_drawn": statistics.fmean(r["samples_drawn"] for r in group),
                "models": MODELS_HELD[key[1]],
            }
        )
    return out


def _by_curve_final(rows: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for key, row in final_rows(rows).items():
        grouped.setdefault(key[1:], []).append(row)
    return grouped


def common_top(rows: list[dict], curve_a: tuple, curve_b: tuple) -> float:
    """The largest KL both curves reach in every seed (each curve's own largest checkpoint KL, the smallest of them)."""
    by_curve = curves(rows)
    tops = [
        max(row["kl"] for row in seed_rows)
        for curve in (curve_a, curve_b)
        for seed_rows in by_curve.get(curve, {}).values()
    ]
    return min(tops) if tops else math.nan


def comparisons(rows: list[dict], methods, betas, kls) -> list[dict]:
    """DPO (its first beta) against every other curve (`matched_kl`) at the profile's `kls` and at the largest KL
    both reach (`common_top`, rounded down to 0.01 nats)."""
    if "dpo" not in methods:
        return []
    dpo = ("all pairs", "dpo", betas[0])
    out = []
    for other in (key for key in curves(rows) if key != dpo and key[0] == "all pairs"):
        top = math.floor(100 * common_top(rows, dpo, other)) / 100
        at = sorted(set(kls) | ({top} if math.isfinite(top) else set()))
        out.append({"a": list(dpo), "b": list(other), "at": matched_kl(rows, dpo, other, at)})
    return out


def summarize(rows: list[dict], profile: Profile, folder: Path, *, methods, betas) -> dict:
    reward_models = [
        json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("reward_model_seed*.json"))
    ]
    offsets = {}
    if "odpo" in methods:
        offsets = {
            seed: offset_stats(
                load_preferences(folder / f"pairs_seed{seed}.jsonl", require_scores=True, log=None),
                profile.frontier_odpo_alpha,
                profile.frontier_odpo_score_scale,
            )
            for seed in profile.frontier_seeds
        }
    return {
        "profile": profile.name,
        "methods": list(methods),
        "betas": list(betas),
        "seeds": list(profile.frontier_seeds),
        "settings": list(setting_names(profile)),
        "odpo_alpha": profile.frontier_odpo_alpha,
        "odpo_score_scale": profile.frontier_odpo_score_scale,
        "rloo_beta": profile.frontier_rloo_beta,
        "train_prompts": profile.frontier_train_prompts,
        "heldout_prompts": profile.frontier_heldout_prompts,
        "max_new_tokens": profile.frontier_max_new_tokens,
        "bon_ns": list(profile.frontier_bon_ns),
        "runs": len(run_keys(profile, methods, betas)),
        "curves": curve_table(rows),
        "final": final_table(rows),
        "kl_span": kl_span(rows),
        "beta_orders_kl": beta_orders_kl(rows),
        "odpo_minus_dpo": odpo_minus_dpo(rows),
        "matched_kl": comparisons(rows, methods, betas, profile.frontier_matched_kls),
        "costs": costs(rows),
        "reward_models": reward_models,
        "offsets": offsets,
    }


def markdown_table(summary: dict) -> str:
    methods = ", ".join(LABELS[m] for m in summary["methods"])
    lines = [
        f"# Reward-KL frontier ({summary['profile']} profile, {summary['device']}, {summary['precision']})",
        "",
        f"{summary['runs']} runs in {summary['seconds'] / 60:.1f} min: {methods}; seeds {summary['seeds']}; "
        f"DPO/ODPO betas {summary['betas']}; RLOO beta {summary['rloo_beta']}; best-of-N for N in {summary['bon_ns']}; "
        f"{summary['train_prompts']} openings for pairs, {summary['heldout_prompts']} held-out prompts, "
        f"{summary['max_new_tokens']} new tokens.",
        "",
        "![frontier](frontier.png)",
        "",
        f"KL span of the non-reference checkpoints: {summary['kl_span']['min']:.2f} to {summary['kl_span']['max']:.2f} "
        f"nats ({summary['kl_span']['ratio']:.1f}x). Best-of-N's KL is the bound log N - (N-1)/N, an upper bound.",
        "",
        "## Every checkpoint (seed means; gain over each seed's reference ± 1.96 SE)",
        "",
        "| setting | method | step | KL (nats) | gain | reward |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["curves"]:
        lines.append(
            f"| {row['setting']} | {label(row['method'], row['beta'])} | {row['step']} | "
            f"{row['kl']:.2f} ± {row['kl_spread']:.2f} | {row['gain']:+.3f} ± {1.96 * row['gain_se']:.3f} | "
            f"{row['reward']:+.3f} |"
        )
    if summary["matched_kl"]:
        lines += [
            "",
            "## At matched KL: DPO minus each other curve (pooled over seeds and prompts)",
            "",
            "| other | KL | difference ± SE | per seed | > 2 SE, seeds agree |",
            "|---|---|---|---|---|",
        ]
        for comparison in summary["matched_kl"]:
            for point in comparison["at"]:
                per_seed = ", ".join(f"{v:+.3f}" for v in point["per_seed"].values())
                lines.append(
                    f"| {label(comparison['b'][1], comparison['b'][2])} | {point['kl']:g} | "
                    f"{point['difference']:+.3f} ± {point['se']:.3f} | {per_seed} | "
                    f"{'yes' if point['separated'] else 'no'} |"
                )
    if summary["reward_models"]:
        lines += [
            "",
            "## The reward model (held-out pairs, fresh samples)",
            "",
            "| seed | train accuracy (last epoch) | held-out pair accuracy | Spearman with VADER, within prompts | seconds |",
            "|---|---|---|---|---|",
        ]
        for rm in summary["reward_models"]:
            lines.append(
                f"| {rm['seed']} | {rm['train_accuracy']:.3f} | {rm['heldout']['accuracy']:.3f} "
                f"({rm['heldout_pairs']}) | {rm['heldout']['spearman_within']:+.3f} | {rm['seconds']:.0f} |"
            )
    lines += [
        "",
        "## Costs (mean over seeds; the reward model's own training is in its table)",
        "",
        "| method | steps (best-of-N: N) | training seconds | samples drawn | models held |",
        "|---|---|---|---|---|",
    ]
    for row in summary["costs"]:
        lines.append(
            f"| {label(row['method'], row['beta'])} | {row['steps']} | {row['seconds_train']:.0f} | "
            f"{row['samples_drawn']:.0f} | {row['models']} |"
        )
    if summary["beta_orders_kl"]:
        lines += [
            "",
            "## Does beta order the KL? Spearman(beta, final KL)",
            "",
            "| setting | method | per seed | mean |",
            "|---|---|---|---|",
        ]
        for row in summary["beta_orders_kl"]:
            per_seed = ", ".join(f"{value:+.2f}" for value in row["per_seed"].values())
            lines.append(f"| {row['setting']} | {row['method'].upper()} | {per_seed} | {row['mean']:+.2f} |")
    for row in summary["odpo_minus_dpo"]:
        lines += [
            "",
            "## ODPO minus DPO at the same seed, beta and last step (95 % interval, paired over prompts)",
            "",
            f"{row['setting']}: {row['reward']:+.3f} ± {row['ci95']:.3f} over {row['runs']} matched runs",
        ]
    return "\n".join(lines) + "\n"
