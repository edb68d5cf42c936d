"""Preferred-FT: supervised fine-tuning on the chosen completions only (a baseline of the DPO paper's Fig. 2).

The loss is the negative log-likelihood of the response tokens, EOS included, the prompt masked: summed over the
batch's response tokens and divided by their number (a token mean, as TRL's SFTTrainer and as RPO's NLL term,
`sft_weight` in dpo_edu.losses). Rows are tokenised exactly as DPO's chosen rows (`dpo_edu.data.tokenize_pair`), and
the log-probs are the course's (`dpo_edu.logprobs.sequence_logprobs`). The loop is `dpo_edu.reward_model.fit`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import torch

from .data import IGNORE_INDEX, tokenize_pair
from .logprobs import sequence_logprobs
from .reward_model import TRAINING_RANGES, check_config, epoch_batches, fit
from .utils import pad_token_id


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Every knob of `train_sft`, checked on creation (all problems in one ValueError)."""

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8  # examples per optimizer step
    epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_prompt_length: int = 64
    use_chat_template: bool = False  # the course's prompts are text to continue (dpo_edu.stages.train_config)
    mixed_precision: str = "auto"  # dpo_edu.precision's names
    seed: int = 0

    RANGES: ClassVar[dict] = TRAINING_RANGES
    gradient_accumulation_steps: ClassVar[int] = 1  # what train.make_accelerator reads

    def __post_init__(self) -> None:
        check_config(self)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"invalid SFTConfig: max_prompt_length must be below max_length, got "
                f"{self.max_prompt_length} with max_length {self.max_length}"
            )


def sft_rows(
    tokenizer, examples: list[dict[str, Any]], config: SFTConfig, *, log: Callable[[str], None] | None = print
) -> list[dict]:
    """Each example's (prompt, chosen) tokenised as DPO's chosen row: {"input_ids", "labels", ...}; rows that
    cannot be (the prompt's tokens change at the seam, no room for a response) are skipped and counted in one line."""
    rows, skipped = [], 0
    for example in examples:
        try:
            rows.append(
                tokenize_pair(
                    tokenizer,
                    example["prompt"],
                    example["chosen"],
                    max_length=config.max_length,
                    max_prompt_length=config.max_prompt_length,
                    use_chat_template=config.use_chat_template,
                )
            )
        except ValueError:  # TokenSeamError, NoRoomForResponse
            skipped += 1
    if skipped and log is not None:
        log(f"Preferred-FT: skipped {skipped} of {len(examples)} examples that cannot be tokenised as DPO's pairs")
    if not rows:
        raise ValueError(f"none of the {len(examples)} examples can be trained on (see dpo_edu.data.tokenize_pair)")
    return rows


def response_nll(model, rows: list[dict], pad: int) -> tuple[torch.Tensor, int]:
    """(NLL per response token (), with gradient; the number of response tokens) of `rows` under `model`."""
    width, device = max(len(row["input_ids"]) for row in rows), next(model.parameters()).device
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        input_ids[index, :length], attention_mask[index, :length] = torch.tensor(row["input_ids"]), 1
        labels[index, :length] = torch.tensor(row["labels"])
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False).logits
    tokens = int((labels != IGNORE_INDEX).sum())
    return -sequence_logprobs(logits, labels.to(device)).sum() / tokens, tokens


def train_sft(
    model,
    tokenizer,
    examples: list[dict[str, Any]],
    config: SFTConfig,
    *,
    on_step: Callable[[dict], dict | None] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, float]]:
    """Fine-tune `model` in place on each example's chosen completion ({"prompt", "chosen", ...}: DPO's pairs will
    do); return one record per step (`fit`): loss (NLL per response token), tokens, grad_norm, lr, seconds, and
    what `on_step(record)` returns."""
    if not examples:
        raise ValueError("train_sft got no examples")
    rows, pad = sft_rows(tokenizer, examples, config, log=log), pad_token_id(tokenizer)

    def step_loss(prepared, items: list[int]):
        loss, tokens = response_nll(prepared, [rows[i] for i in items], pad)
        return loss, {"tokens": float(tokens)}

    steps = epoch_batches(
        len(rows), config.batch_size, epochs=config.epochs, max_steps=config.max_steps, seed=config.seed
    )
    return fit(model, config, steps, step_loss, desc="Preferred-FT", on_step=on_step, progress=progress)
