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
(`dpo_edu.frontier_report`, which reads the rows). The reward model, when a method needs one, is trained once
per seed, and its held-out pair accuracy and rank agreement with VADER are recorded beside DPO's implicit reward
on the same pairs.

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
import statistics
import time
from pathlib import Path

import torch

from .best_of_n import best_of_n, check_ns
from .config import Profile
from .data import load_preferences, prompt_text, write_jsonl
from .evaluate import RewardEvaluator, format_kl, mean_and_se, win_rate
from .frontier_report import (
    BETA_METHODS,
    METHODS,
    beta_orders_kl,
    comparisons,
    costs,
    curve_table,
    final_table,
    kl_span,
    label,
    markdown_table,
    odpo_minus_dpo,
    plot_frontier,
    run_of,
)
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
    train_reward_model,
)
from .rewards import rewards_of, sentiment
from .rloo import RLOOConfig, train_rloo
from .rundir import RunFolder
from .sft import SFTConfig, train_sft
from .stages import OpenRun, open_run, sample_pairs, train_config
from .train import TrainConfig, compute_pair_logps, pair_offsets, train_dpo
from .utils import device_name, get_device, seed_everything

NEEDS_REWARD_MODEL = ("rloo", "bon")  # methods that train a reward model on the seed's pairs


def check_methods(methods) -> tuple[str, ...]:
    """The methods asked for, in the course's order; one clear line for an unknown one or none."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    names = [name.strip() for method in methods for name in method.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        problem = f"unknown method {unknown[0]!r}" if unknown else "no method given"
        raise ValueError(f"{problem}; choose from {', '.join(METHODS)} (comma-separated)")
    return tuple(method for method in METHODS if method in names)


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


def finished_rows(path: Path) -> list[dict]:
    """The rows of frontier.jsonl that belong to runs which finished (their last row says "final")."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    finished = {run_of(row) for row in rows if row.get("final")}
    return [row for row in rows if run_of(row) in finished]


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
    done = {run_of(row) for row in rows}
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
                "win_rate": win_rate(result["rewards"], reference_rewards),
                "rewards": result["rewards"],
                "seconds_train": seconds,
                "samples_drawn": result["n"] * len(reference_rewards),
                **({"final": True} if number == len(results) - 1 else {}),
            }
        )


# ------------------------------------------------------------ the sweep's summary


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
