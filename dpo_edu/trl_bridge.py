"""From the course's `TrainConfig` to TRL's `DPOConfig` (the installed TRL, 1.16), so a learner's settings carry over.

`TRL_FIELDS` is the table: each `TrainConfig` field, the `trl.DPOConfig`
field(s) it becomes, and what differs. `to_dpo_config` applies it, and raises
ValueError naming the field when a setting has no TRL 1.16 equivalent.
`markdown_table` prints it (notebook 08, README).

What is the same (tests/test_trl_parity.py trains one tiny model both ways and
compares every step): the sequence log-prob (sum over response tokens, EOS
included), the losses sigmoid / hinge / robust / IPO (length-normalised) /
sigmoid + sft, the rewards beta * (log pi - log pi_ref), AdamW, the linear
schedule with warm-up, gradient clipping, and truncation at max_length when no
prompt is longer than max_prompt_length.

trl is optional (not a dependency of the package): it is imported only inside
`to_dpo_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

from .precision import resolve
from .train import TrainConfig
from .utils import get_device


class Row(NamedTuple):
    train_config: str  # a TrainConfig field, or "(always)" for what dpo-edu's trainer does without a field
    dpo_config: tuple[str, ...]  # the trl.DPOConfig field(s) it maps to in TRL 1.16; () where there is none
    note: str


TRL_FIELDS: tuple[Row, ...] = (
    Row("beta", ("beta",), "Same meaning. For IPO, TRL's docs call it tau."),
    Row(
        "loss_type",
        ("loss_type",),
        'A list in TRL: "sigmoid" -> ["sigmoid"], "hinge" -> ["hinge"], "robust" -> ["robust"], "ipo" -> ["ipo"]. '
        "IPO: TRL divides each log-ratio by its completion length (tokens incl. EOS), and so does dpo-edu's trainer; "
        "the paper, and `dpo_loss` without lengths, use the sums. "
        '"simpo" and "orpo" are no DPOTrainer loss types in TRL 1.16 (ValueError). They live in trl.experimental '
        '(not compared here): SimPO in `cpo.CPOTrainer` with `CPOConfig(loss_type="simpo", cpo_alpha=0.0)` '
        "(cpo_alpha adds an NLL term), ORPO in `orpo.ORPOTrainer` (its beta is the paper's lambda).",
    ),
    Row(
        "label_smoothing",
        ("label_smoothing",),
        'With "robust": the same flip rate eps. With "sigmoid" (cDPO) there is no TRL 1.16 equivalent: its "sigmoid" '
        'has no label smoothing (ValueError); "robust" is the unbiased variant, a different loss.',
    ),
    Row(
        "sft_weight",
        ("loss_type", "loss_weights"),
        'w > 0 (RPO): loss_type=[<loss_type>, "sft"], loss_weights=[1, w]. Both add w x the mean NLL over the '
        "micro-batch's chosen tokens (EOS included).",
    ),
    Row("simpo_gamma", (), "SimPO only: `CPOConfig.simpo_gamma` in `trl.experimental.cpo`; no DPOConfig field."),
    Row("learning_rate", ("learning_rate",), "Defaults differ: TRL 1e-6, the course 1e-5."),
    Row(
        "weight_decay",
        ("weight_decay",),
        "The Trainer exempts biases and norm weights from decay, dpo-edu decays every parameter: "
        "the same runs only at 0 (the default of both).",
    ),
    Row(
        "batch_size",
        ("per_device_train_batch_size", "gradient_accumulation_steps"),
        "Pairs per optimizer step in each process = per_device_train_batch_size x gradient_accumulation_steps. "
        "Under `accelerate launch` with N processes both trainers take N x that many pairs per step.",
    ),
    Row("gradient_accumulation_steps", ("gradient_accumulation_steps",), "Same."),
    Row("epochs", ("num_train_epochs",), "Same."),
    Row("max_steps", ("max_steps",), "None -> -1 (TRL's 'not set')."),
    Row(
        "warmup_steps",
        ("warmup_steps", "lr_scheduler_type"),
        'Linear warm-up, then linear decay to 0 (lr_scheduler_type="linear", TRL\'s default too). A TRL warmup_steps '
        "below 1 is a fraction of the steps; dpo-edu caps the warm-up at the run's length less one step (a one-step "
        "run then trains at the full rate instead of 0), TRL does not.",
    ),
    Row("max_grad_norm", ("max_grad_norm",), "Same (clip the total norm; TRL logs it as grad_norm too)."),
    Row(
        "max_length",
        ("max_length", "truncation_mode"),
        'truncation_mode="keep_start" (TRL 1.16\'s only non-deprecated mode): prompt + response are cut at '
        "max_length, keeping the start, as dpo-edu cuts the response's end. TRL drops a pair whose prompt alone fills "
        "max_length; dpo-edu cannot get one (max_prompt_length < max_length).",
    ),
    Row(
        "max_prompt_length",
        (),
        "No DPOConfig field in TRL 1.16: TRL never shortens a prompt, dpo-edu keeps a long prompt's last "
        "max_prompt_length tokens. The runs agree when no prompt is longer; else shorten the prompts first.",
    ),
    Row(
        "mixed_precision",
        ("bf16", "fp16", "use_cpu"),
        '"fp32" -> bf16=False, fp16=False; "bf16" -> bf16=True; "fp16" -> fp16=True; "auto" is resolved on this '
        "machine first (bf16 on a GPU or CPU that has it, fp16 on other GPUs, else fp32). TRL's bf16 defaults to True "
        "when fp16 is not set. Where the course trains on the CPU, use_cpu=True: TRL then trains there too, and "
        "takes bf16 there (without it, it refuses bf16 on a machine with no bf16 GPU).",
    ),
    Row(
        "gradient_checkpointing",
        ("activation_checkpointing", "gradient_checkpointing"),
        "Defaults differ: TRL True, the course False. transformers 5.25 calls it activation_checkpointing "
        "(gradient_checkpointing, the name TRL's docs use, is its deprecated alias, gone in v6); `to_dpo_config` "
        "sets whichever name the installed transformers has.",
    ),
    Row(
        "use_chat_template",
        (),
        "No field: TRL applies the chat template to conversational rows (lists of messages), not to strings. "
        "Its tokens then differ from dpo-edu's (TRL renders prompt + response as one conversation with the template's "
        "end-of-turn tokens; dpo-edu renders the prompt with the generation prompt, then response + EOS). "
        "Plain strings (use_chat_template=False) tokenise the same unless the prompt ends in whitespace: dpo-edu then "
        "strips the response's leading whitespace, TRL keeps it.",
    ),
    Row("odpo_alpha", (), "ODPO's offset has no TRL 1.16 field (ValueError when set)."),
    Row("odpo_score_scale", (), "ODPO only."),
    Row(
        "seed",
        ("seed", "train_sampling_strategy"),
        'Same field, not the same shuffle of the pairs; train_sampling_strategy="sequential" turns TRL\'s off.',
    ),
    Row(
        "(always)",
        ("precompute_ref_log_probs",),
        "dpo-edu computes the reference log-probs once, before the first step: precompute_ref_log_probs=True "
        "(TRL's default False runs the reference model at every step).",
    ),
    Row("(always)", ("logging_steps",), "One metrics record per optimizer step: logging_steps=1 (TRL's default 10)."),
    Row(
        "(always)",
        ("optim", "adam_beta1", "adam_beta2", "adam_epsilon"),
        "AdamW with torch's defaults (betas 0.9, 0.999, eps 1e-8), fused: the Trainer's defaults "
        '(optim="adamw_torch_fused" with torch >= 2.8).',
    ),
    Row(
        "(always)",
        (),
        "Tokens: EOS after each response, and scored, in both (TRL appends eos_token to string responses). A pair "
        "whose prompt tokens change when the response follows is skipped by dpo-edu (TokenSeamError); TRL starts "
        "the completion where the two tokenisations diverge.",
    ),
    Row(
        "(always)",
        ("disable_dropout",),
        "dpo-edu trains with the model's own dropout (SmolLM2: attention_dropout 0.0) and computes the reference in eval mode; "
        "TRL removes dropout by default (True). Equal for a model without dropout.",
    ),
)


def untranslatable(config: TrainConfig) -> list[str]:
    """The settings of `config` that TRL 1.16's DPOTrainer cannot reproduce, one sentence each naming the field."""
    problems = []
    if config.loss_type in ("simpo", "orpo"):
        problems.append(
            f"loss_type {config.loss_type!r} is no DPOTrainer loss type in TRL 1.16: use "
            + (
                'trl.experimental.cpo.CPOTrainer with CPOConfig(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=...)'
                if config.loss_type == "simpo"
                else "trl.experimental.orpo.ORPOTrainer with ORPOConfig(beta=...)"
            )
        )
    if config.loss_type == "sigmoid" and config.label_smoothing:
        problems.append(
            f"label_smoothing {config.label_smoothing} with loss_type 'sigmoid' (cDPO) has no TRL 1.16 equivalent: its "
            "'sigmoid' loss has no label smoothing ('robust' is a different loss)"
        )
    if config.odpo_alpha is not None:
        problems.append(f"odpo_alpha {config.odpo_alpha} (ODPO's offset) has no TRL 1.16 field")
    return problems


def to_dpo_config(config: TrainConfig, output_dir: str | Path, **overrides: Any):
    """The `trl.DPOConfig` that trains like `config` (see `TRL_FIELDS`); `overrides` are DPOConfig fields set last.

    Raises ValueError naming the field when a setting has no TRL 1.16 equivalent
    (cDPO's label smoothing, ODPO, SimPO, ORPO).
    """
    from trl import DPOConfig

    problems = untranslatable(config)
    if problems:
        raise ValueError("cannot carry this TrainConfig over to trl.DPOConfig: " + "; ".join(problems))
    loss_type, loss_weights = [config.loss_type], None
    if config.sft_weight:
        loss_type, loss_weights = [config.loss_type, "sft"], [1.0, config.sft_weight]
    fields = {field.name for field in dataclasses.fields(DPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    device = get_device()
    precision = resolve(config.mixed_precision, device)
    settings = dict(
        output_dir=str(output_dir),
        beta=config.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        label_smoothing=config.label_smoothing,  # only "robust" reads it here; cDPO raised above
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.micro_batch_size,  # TrainConfig checks that it divides
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        max_length=config.max_length,
        truncation_mode="keep_start",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",  # as the course's trainer runs; TRL takes bf16 on a CPU only with it
        **{checkpointing: config.gradient_checkpointing},
        seed=config.seed,
        precompute_ref_log_probs=True,
        logging_steps=1,
    )
    return DPOConfig(**{**settings, **overrides})


def markdown_table() -> str:
    """`TRL_FIELDS` as a markdown table: TrainConfig field | trl.DPOConfig field(s) | note."""
    lines = ["| `TrainConfig` | `trl.DPOConfig` (TRL 1.16) | note |", "|---|---|---|"]
    for row in TRL_FIELDS:
        course = row.train_config if row.train_config.startswith("(") else f"`{row.train_config}`"
        trl = ", ".join(f"`{name}`" for name in row.dpo_config) or "none"
        lines.append(f"| {course} | {trl} | {row.note.replace('|', '/')} |")
    return "\n".join(lines)
