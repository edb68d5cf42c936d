"""The DPO training loop, on Hugging Face accelerate.

One file, top to bottom, like nanoGPT's train.py:

1. `TrainConfig`: every knob, checked before any work starts.
2. Tokenise the (prompt, chosen, rejected) examples (`dpo_edu.data`).
3. Reference log-probs, computed ONCE with the model as it is before training
   (the policy starts as the reference), so no second copy of the model sits in
   memory during training.
4. The loop: chosen and rejected in one forward pass, `dpo_loss`, AdamW with a
   linear warm-up and decay, gradient clipping, gradient accumulation; one line of
   metrics per optimizer step (`StepMetrics`: to a list, and to metrics.jsonl if
   asked). Checkpoints and resuming are `dpo_edu.checkpoint`'s.

`Accelerator` places the model and batches on the device, uses bf16 where the
GPU has it (else fp16 with loss scaling), and lets the same loop run under
`accelerate launch` on several GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, get_args, get_type_hints

import torch
from torch.utils.data import DataLoader

from . import checkpoint as checkpoints
from .data import (
    IGNORE_INDEX,
    NoRoomForResponse,
    TokenSeamError,
    collate_preferences,
    split_chosen_rejected,
    tokenize_preference,
)
from .logprobs import sequence_logprobs
from .losses import REFERENCE_FREE, check_loss_settings, dpo_loss, odpo_offset
from .precision import accelerate_mixed_precision, precision_dtype, precision_problem
from .utils import eval_mode, get_device, pad_token_id, seed_everything

METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "grad_norm",
    "lr",
    "tokens_per_second",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of `train_dpo`; each field's type and range is checked on creation, all problems in one ValueError."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8  # preference pairs per optimizer step
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimizer steps
    warmup_steps: int = 10  # linear warm-up, capped below the run's length (`capped_warmup`)
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_prompt_length: int = 64
    # auto: bf16 / fp16 where the hardware has it (GPUs, CPUs with AVX512-BF16 or AMX), else "fp32"
    mixed_precision: str = "auto"
    # keep only each layer's input, recompute the rest in backward: less memory, more time (benchmarks/train_vs_trl.py)
    gradient_checkpointing: bool = False
    use_chat_template: bool | None = None  # None: if the tokenizer has one; False: plain-text continuation
    # None: DPO; a number: ODPO, offset alpha * log(odpo_score_scale * (chosen_score - rejected_score))
    odpo_alpha: float | None = None
    # the scores' unit: gaps below 1 / scale get a negative offset (see losses.odpo_offset)
    odpo_score_scale: float = 1.0
    # > 0: add sft_weight * NLL(chosen) (RPO; TRL: loss_type=["sigmoid", "sft"], loss_weights=[1, w])
    sft_weight: float = 0.0
    simpo_gamma: float = 0.5  # SimPO's target margin (loss_type="simpo")
    seed: int = 0

    def __post_init__(self) -> None:
        names = [field.name for field in dataclasses.fields(self)]
        bad = {name: problem for name in names if (problem := _field_problem(name, getattr(self, name)))}
        problems = [*bad.values(), *self._clashes(valid=set(names) - bad.keys())]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def _clashes(self, valid: set[str]) -> list[str]:
        """Problems between fields, each checked only when the fields it reads are valid on their own."""
        problems = []
        if (
            valid >= {"batch_size", "gradient_accumulation_steps"}
            and self.batch_size % self.gradient_accumulation_steps
        ):
            problems.append(
                f"batch_size {self.batch_size} must be a multiple of "
                f"gradient_accumulation_steps {self.gradient_accumulation_steps}"
            )
        if valid >= {"max_prompt_length", "max_length"} and self.max_prompt_length >= self.max_length:
            problems.append(
                f"max_prompt_length must be in [1, max_length), got {self.max_prompt_length} "
                f"with max_length {self.max_length}"
            )
        if valid >= _LOSS_FIELDS:  # the loss's own rules live in dpo_edu.losses, for dpo_loss and TrainConfig alike
            problems += check_loss_settings(
                self.loss_type,
                self.beta,
                label_smoothing=self.label_smoothing,
                sft_weight=self.sft_weight,
                simpo_gamma=self.simpo_gamma,
                offset=self.odpo_alpha is not None,
            )
        return problems

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.gradient_accumulation_steps


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value > low), f"> {low}"


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f">= {low}"


def _within(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: low <= value < high), f"in [{low}, {high})"


# A TrainConfig field's type is its annotation ("| None": None will do); its range, or its allowed strings, is here,
# except for the loss's fields, whose rules (ranges and which loss_type takes which) are losses.check_loss_settings.
_LOSS_FIELDS = {"loss_type", "beta", "label_smoothing", "sft_weight", "simpo_gamma", "odpo_alpha"}
_RANGES = {
    "learning_rate": _above(0),
    "weight_decay": _at_least(0),
    "batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "epochs": _at_least(1),
    "max_steps": _at_least(1),
    "warmup_steps": _at_least(0),
    "max_grad_norm": _above(0),
    "max_length": _at_least(1),
    "max_prompt_length": _at_least(1),
    "odpo_alpha": _at_least(0),
    "odpo_score_scale": _above(0),
    "seed": _within(0, 2**32),  # numpy's seeds
}
_KINDS = {int: "an int", float: "a finite number", bool: "True or False", str: "a string"}


def _is_a(kind: type, value: Any) -> bool:
    """isinstance(value, kind), except that a bool is no number and a float must be finite (an int will do)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int) or isinstance(value, float) and math.isfinite(value)
    return isinstance(value, kind)


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with TrainConfig field `name` set to `value`, in words; None if nothing."""
    if name == "mixed_precision":
        return precision_problem(value, name)
    kinds = set(get_args(_HINTS[name]) or [_HINTS[name]])
    optional = type(None) in kinds
    if optional and value is None:
        return None
    (kind,) = kinds - {type(None)}
    none_or = "None or " if optional else ""
    if not _is_a(kind, value):
        return f"{name} must be {none_or}{_KINDS[kind]}, got {value!r} ({type(value).__name__})"
    in_range, words = _RANGES.get(name, (lambda _: True, ""))
    return None if in_range(value) else f"{name} must be {none_or}{words}, got {value!r}"


_HINTS = get_type_hints(TrainConfig)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return {**self.features[index], "index": index}


def pair_loader(features: list[dict], batch_size: int, pad_token_id: int, *, shuffle: bool, seed: int) -> DataLoader:
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_preferences(items, pad_token_id)
        batch["index"] = torch.tensor([item["index"] for item in items])
        return batch

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_Pairs(features), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over the 2B rows (chosen first): returns chosen and rejected sequence log-probs, each (B,).

    Logits only where they are scored: from the first position whose next
    token is a response token to the end (`logits_to_keep`). Prompt positions
    need none, and the LM head (a fifth of SmolLM2's weights) is the costliest
    layer per position. No KV cache (`use_cache=False`): transformers builds one
    whenever the model's config asks for it (SmolLM2's does), and nothing here
    generates.
    """
    labels = batch["labels"]  # (2B, T), IGNORE_INDEX on prompt and padding
    scored = (labels != IGNORE_INDEX).any(0).nonzero()
    # logits at t - 1 predict the label at t; with no label at all (custom features masked away) every sum is 0
    first_scored = int(scored[0]) if len(scored) else labels.shape[1] - 1
    keep = labels.shape[1] - first_scored + 1
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False
    ).logits
    return split_chosen_rejected(sequence_logprobs(logits, labels[:, -keep:]))


@torch.no_grad()
def reference_logps(model, loader: DataLoader, accelerator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of every pair under `model` as it is now, in eval mode: (N,) chosen, (N,) rejected (on CPU).

    Under several processes each sees a shard of `loader`; the results are
    gathered, so every process holds the log-probs of every pair.
    """
    n = len(loader.dataset)
    chosen, rejected = torch.zeros(n), torch.zeros(n)
    with eval_mode(model):
        for batch in loader:
            if device is not None:  # a loader not prepared by accelerate
                batch = {key: value.to(device) for key, value in batch.items()}
            chosen_logps, rejected_logps = pair_logps(model, batch)
            index = batch["index"]
            if accelerator is not None:
                index, chosen_logps, rejected_logps = accelerator.gather_for_metrics(
                    (index, chosen_logps, rejected_logps)
                )
            chosen[index.cpu()] = chosen_logps.float().cpu()
            rejected[index.cpu()] = rejected_logps.float().cpu()
    return chosen, rejected


def usable_examples(
    tokenizer, examples: list[dict[str, Any]], config: TrainConfig, *, log=print
) -> tuple[list[dict], list[dict]]:
    """Tokenise every example; return (kept examples, their features), skipping what cannot be trained on.

    Rules (each counted in one line via `log`): a prompt longer than
    `max_prompt_length` keeps its last tokens (counted as "prompt truncated");
    a pair whose prompt leaves no room for a response token in `max_length`, or
    whose prompt tokens change at the seam with the response, is skipped.
    Raises ValueError when nothing is left.
    """
    kept, features, counts = [], [], {}
    for example in examples:
        try:
            feature = tokenize_preference(
                tokenizer,
                example,
                max_length=config.max_length,
                max_prompt_length=config.max_prompt_length,
                use_chat_template=config.use_chat_template,
            )
        except NoRoomForResponse:
            counts["no room for a response after the prompt"] = (
                counts.get("no room for a response after the prompt", 0) + 1
            )
            continue
        except TokenSeamError:
            counts["prompt tokens change at the seam"] = counts.get("prompt tokens change at the seam", 0) + 1
            continue
        if feature["chosen"]["prompt_truncated"]:
            counts["prompt truncated"] = counts.get("prompt truncated", 0) + 1
        kept.append(example)
        features.append(feature)
    if counts and log is not None:
        skipped = len(examples) - len(kept)
        log(
            f"training pairs: skipped {skipped:,} of {len(examples):,}; "
            + ", ".join(f"{n:,} {reason}" for reason, n in counts.items())
            + f" (max_length={config.max_length}, max_prompt_length={config.max_prompt_length})"
        )
    if not kept:
        raise ValueError(
            f"none of the {len(examples):,} examples can be trained on: "
            + ", ".join(f"{n} {reason}" for reason, n in counts.items())
        )
    return kept, features


def compute_pair_logps(
    model, tokenizer, examples: list[dict[str, Any]], config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """`model`'s sequence log-probs of `examples`, batch for batch as `train_dpo` computes the reference's:
    (N,) chosen, (N,) rejected, on CPU, for the N examples `usable_examples` keeps (a peft model's adapters off).

    For a reference and sweeps: compute them once, then pass `reference=` to every `train_dpo` that starts from
    this model. An evaluator passes the policy instead (`evaluate.PairsEvaluator`).
    """
    _, features = usable_examples(tokenizer, examples, config, log=None)
    loader = _reference_loader(features, config, pad_token_id(tokenizer))
    device = next(model.parameters()).device
    dtype = precision_dtype(device, config.mixed_precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), adapters_disabled(model):
        return reference_logps(model, loader, device=device)


def _reference_loader(features: list[dict], config: TrainConfig, pad_token_id: int) -> DataLoader:
    """The training loader's first epoch, batch for batch (same seed, same shuffle).

    The reference log-probs of step 1's pairs then come from the very batch the
    policy's first forward sees, with the same padding and the same arithmetic,
    so step 1's loss is ln 2 and its margin 0 in bf16 too, not only up to
    rounding that depends on which pairs share a batch.
    """
    return pair_loader(features, config.micro_batch_size, pad_token_id, shuffle=True, seed=config.seed)


def pair_offsets(examples: list[dict[str, Any]], alpha: float, scale: float = 1.0) -> torch.Tensor:
    """ODPO's offsets (N,) from each example's chosen_score and rejected_score (scale and ties: see `odpo_offset`)."""
    for number, example in enumerate(examples):
        for field in ("chosen_score", "rejected_score"):
            value = example.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"example {number}, field {field!r}: ODPO needs a finite number, got {value!r}")
    chosen = torch.tensor([float(example["chosen_score"]) for example in examples])
    rejected = torch.tensor([float(example["rejected_score"]) for example in examples])
    return odpo_offset(chosen, rejected, alpha, scale=scale)


def make_accelerator(config: TrainConfig):
    """An Accelerator with this config's precision and accumulation.

    accelerate keeps the precision in a process-wide singleton and refuses a
    second Accelerator with another one; a notebook that trains in bf16 and
    then in fp32 must be able to, so that part of the state is reset first
    (the process group, under `accelerate launch`, is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    device = get_device()
    # cpu=True on a CPU: DPO_EDU_DEVICE=cpu is obeyed on a GPU machine too, and `accelerate launch --multi_gpu` on a
    # CPU-only machine runs its processes over gloo (without it they would each train alone, silently)
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=accelerate_mixed_precision(config.mixed_precision, device),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def adapters_disabled(model):
    """A context in which a peft model (dpo_edu.lora) is its base model: the reference, with no second copy of the weights."""
    is_peft = hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
    return model.disable_adapter() if is_peft else contextlib.nullcontext()


class TrainingStopped(RuntimeError):
    """Training stopped early (a non-finite loss, or an interrupt); the message says where the last checkpoint is."""


def planned_steps(n_pairs: int, config: TrainConfig, processes: int = 1) -> int:
    """How many optimizer steps `train_dpo` takes on `n_pairs` usable pairs (`usable_examples`) in `processes` processes.

    An epoch is ceil(n_pairs / micro_batch_size) micro-batches, shared out so that every process gets as many
    (accelerate's even batches); a step is `gradient_accumulation_steps` of them, the epoch's last step maybe fewer.
    """
    micro_batches = math.ceil(math.ceil(n_pairs / config.micro_batch_size) / processes)  # per process and epoch
    return min(
        config.epochs * math.ceil(micro_batches / config.gradient_accumulation_steps), config.max_steps or math.inf
    )


def capped_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up of a run of `total_steps` optimizer steps: `warmup_steps`, but at most total_steps - 1.

    The linear schedule gives step k (from 1) the learning rate lr * (k - 1) / warm-up while it warms up, so step 1
    gets 0: a warm-up as long as the run would leave a one-step run (no more pairs than one batch) training nothing.
    A run longer than its warm-up is unchanged.
    """
    return min(warmup_steps, total_steps - 1)


@dataclasses.dataclass
class PairLosses:
    """One micro-batch of B pairs through the policy and `dpo_loss`: each tensor is (B,), `loss` their mean."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    policy_chosen: torch.Tensor  # sequence log-probs under the policy
    policy_rejected: torch.Tensor
    loss: torch.Tensor  # (), what backward starts from


def pair_losses(
    model,
    batch: dict[str, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    offsets: torch.Tensor | None,
    config: TrainConfig,
    accelerator,
) -> PairLosses:
    """The loss of one micro-batch (2B rows, chosen first): the policy's log-probs under autocast, then `dpo_loss` in float32.

    `reference` (N,) chosen and (N,) rejected log-probs and ODPO's `offsets` (N,) cover every pair; the batch's
    "index" picks its B. Lengths are response tokens (EOS included), for SimPO and IPO.
    """
    with accelerator.autocast():
        policy_chosen, policy_rejected = pair_logps(model, batch)
    index, device = batch["index"].cpu(), policy_chosen.device

    def of_batch(values: torch.Tensor | None) -> torch.Tensor | None:
        """The rows of this micro-batch's pairs, on its device."""
        return None if values is None else values[index].to(device)

    ref_chosen, ref_rejected = reference or (None, None)
    chosen_lengths, rejected_lengths = split_chosen_rejected((batch["labels"] != IGNORE_INDEX).sum(1))
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen.float(),
        policy_rejected.float(),
        of_batch(ref_chosen),
        of_batch(ref_rejected),
        config.beta,
        loss_type=config.loss_type,
        label_smoothing=config.label_smoothing,
        offset=of_batch(offsets),
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        sft_weight=config.sft_weight,
        simpo_gamma=config.simpo_gamma,
    )
    return PairLosses(losses, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected, losses.mean())


class StepMetrics:
    """One optimizer step's line of metrics (METRIC_NAMES): `add` each micro-batch, then `record` the step.

    Loss, rewards and log-probs are means over every process's pairs (under `accelerate launch`: the run's, not
    one shard's), then over the step's micro-batches.
    """

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.start()

    def start(self) -> None:
        """Begin a step: empty sums, and its clock starts (tokens per second is this step's, from here)."""
        self.sums: dict[str, float] = {}
        self.micro_batches, self.tokens, self.started = 0, 0, time.perf_counter()

    def add(self, out: PairLosses, attention_mask: torch.Tensor) -> None:
        """Add one micro-batch, its pairs gathered from every process."""
        losses, chosen, rejected, policy_chosen, policy_rejected = self.accelerator.gather(
            (
                out.losses.detach(),
                out.chosen_rewards,
                out.rejected_rewards,
                out.policy_chosen.detach().float(),
                out.policy_rejected.detach().float(),
            )
        )
        means = {
            "loss": losses.mean().item(),
            "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(),
            "rewards/margins": (chosen - rejected).mean().item(),
            "rewards/accuracies": (chosen > rejected).float().mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }
        for name, value in means.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.micro_batches += 1
        self.tokens += int(self.accelerator.gather(attention_mask.sum()).sum())

    def record(
        self, *, step: int, steps_total: int, epoch: int, grad_norm: torch.Tensor, lr: float
    ) -> dict[str, float]:
        """The step's line: step, steps_total, epoch, the means, grad_norm, lr and tokens_per_second since `start`."""
        elapsed = time.perf_counter() - self.started
        return {
            "step": step,
            "steps_total": steps_total,
            "epoch": epoch,
            **{
                name: total / self.micro_batches for name, total in self.sums.items()
            },  # a short last step: its own mean
            "grad_norm": float(grad_norm),
            "lr": lr,
            "tokens_per_second": self.tokens / max(elapsed, 1e-9),
        }


def _write_step(record: dict, history: list[dict], *, bar, on_step, metrics_file) -> None:
    """Show the step on the progress bar, add what `on_step` returns to its record, keep it in `history` and metrics.jsonl."""
    bar.update(1)
    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:.0f}")
    if on_step:
        record.update(on_step(record) or {})
    history.append(record)
    if metrics_file:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()


def _stop_unless_finite(accelerator, loss: torch.Tensor, *, step: int, epoch: int, checkpoint_dir) -> None:
    """Raise TrainingStopped before any update from a non-finite loss; the last checkpoint stays as it is.

    Decided by all processes together: one stopping alone would leave the others waiting in the gradient all-reduce.
    """
    if accelerator.gather(torch.isfinite(loss.detach())[None]).all():
        return
    raise TrainingStopped(
        f"non-finite loss ({loss.item()}) at step {step}, epoch {epoch}; "
        + (f"the last good checkpoint is in {checkpoint_dir}" if checkpoint_dir else "no checkpoint_dir was given")
        + ". Lower the learning rate, or look for extreme log-probs in the data."
    )


def _micro_batches(
    accelerator, loader: DataLoader, shuffle_generator: torch.Generator, state: checkpoints.TrainerState, epochs: int
):
    """Yield (epoch, micro-batch) from `state`'s position to the last epoch's end, keeping the position in `state` current.

    An epoch's order is fixed by the shuffle generator's state at its start; a resumed epoch sets that state
    again and skips the micro-batches already done. After the last epoch the position is (epochs, 0).
    """
    for epoch in range(state.epoch, epochs):
        if epoch > state.epoch:  # a new epoch: its order is the generator's state now
            state.epoch, state.batches_done_in_epoch, state.epoch_generator_state = (
                epoch,
                0,
                shuffle_generator.get_state(),
            )
        shuffle_generator.set_state(state.epoch_generator_state)
        skip = state.batches_done_in_epoch
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            state.batches_done_in_epoch += 1
            yield epoch, batch
    state.epoch, state.batches_done_in_epoch = epochs, 0


def adamw(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over what trains: with LoRA (dpo_edu.lora) the frozen base weights get no optimizer state.

    fused: one kernel over all parameters instead of a loop over tensors; the same update rule.
    """
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)


def _checkpointing_names(model) -> tuple[str, str, str, str]:
    """The names of activation checkpointing's (is on, enable, disable, enable's kwargs) in the installed transformers.

    transformers 5.25 renamed them from gradient_checkpointing_* to activation_checkpointing_* (the old names warn
    FutureWarning and go in v6); older versions, the floor 5.6 among them, have only the old names.
    """
    old = "gradient_checkpointing"
    new = "activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else old
    return f"is_{new}", f"{new}_enable", f"{new}_disable", f"{new}_kwargs"


@contextlib.contextmanager
def activation_checkpointing(model, enabled: bool = True):
    """Activation (gradient) checkpointing on `model` (unwrapped) inside the block when `enabled`; as it was after."""
    is_on, enable, disable, kwargs = _checkpointing_names(model)
    if not enabled or getattr(model, is_on):
        yield
        return
    getattr(model, enable)(**{kwargs: {"use_reentrant": False}})
    try:
        yield
    finally:
        getattr(model, disable)()


@contextlib.contextmanager
def sparse_embedding_gradient(model):
    """Inside the block, an input embedding tied to the LM head (SmolLM2's, 49,152 x 576) gives its gradient as the
    rows it looked up (`nn.Embedding.sparse`); autograd adds them into the LM head's dense gradient of the same
    weight, so `.grad` is dense and the same sum, without a zero-filled (V, H) gradient and a second (V, H) sum per
    step. An untied or frozen embedding is left alone: its `.grad` would be sparse. As it was after the block."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and embedding.weight is getattr(head, "weight", None)
    if not (isinstance(embedding, torch.nn.Embedding) and tied and embedding.weight.requires_grad) or embedding.sparse:
        yield
        return
    embedding.sparse = True
    try:
        yield
    finally:
        embedding.sparse = False


# what accelerator.prepare sets on the model itself: under mixed precision its forward wrapped in autocast (and the
# forward it replaced), and in any case its "prepared" mark (with which a later prepare would skip the model)
_ACCELERATE_ATTRIBUTES = ("forward", "_original_forward", "_is_accelerate_prepared")


@contextlib.contextmanager
def left_as_it_was(model):
    """Inside the block `model` may be prepared by accelerate and set to train mode; after it, also after an error
    or Ctrl-C, it has its own forward, its own train/eval mode, and no attribute of accelerate's.

    Left wrapped, every later call of the caller's model would run in 16 bits. accelerate's own undoing,
    `unwrap_model(model, keep_fp32_wrapper=False)`, follows `__wrapped__` past the model's own decorators too (1.16:
    a transformers model then loses `can_return_tuple`, and `model(..., return_dict=False)` fails), so the
    attributes prepare set are put back as they were instead.
    """
    was_training = model.training
    own = {name: vars(model)[name] for name in _ACCELERATE_ATTRIBUTES if name in vars(model)}
    try:
        yield
    finally:
        for name in _ACCELERATE_ATTRIBUTES:
            vars(model).pop(name, None)
        vars(model).update(own)
        model.train(was_training)


@dataclasses.dataclass
class TrainHooks:
    """What `train_dpo` reports to and keeps, apart from the algorithm: its metrics file, a callback after every
    optimizer step, the progress bar and log lines, and checkpoints (`dpo_edu.checkpoint`).

    on_step(record) is called after every optimizer step, before the record is written: a dict it returns (evaluation
    results, say) is added to the record. With `checkpoint_dir`, a checkpoint is written atomically every
    `checkpoint_every` steps (0: only at the end) and when Ctrl-C arrives; `resume=True` continues from it.
    """

    metrics_path: str | Path | None = None
    on_step: Callable[[dict[str, float]], dict | None] | None = None
    progress: bool = True
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0
    resume: bool = False
    log: Callable[[str], None] | None = print


def train_dpo(
    model,
    tokenizer,
    examples: list[dict[str, Any]],
    config: TrainConfig,
    *,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    hooks: TrainHooks | None = None,
    **hook_settings,
) -> list[dict[str, float]]:
    """Train `model` in place with DPO on `examples` ({"prompt", "chosen", "rejected"}); return the metrics per step.

    The model's current weights are the reference. `reference` = (chosen, rejected) log-probs (N,) computed earlier
    for these examples and this model (`compute_pair_logps`) skips computing them again: a sweep that trains many
    policies from one reference computes them once. Every record has "step" and "steps_total" (the run's last step
    is the one where they are equal).

    `hooks` (a `TrainHooks`), or its fields as keywords (`progress=False, log=None`, ...), say what the run reports
    and keeps. Nothing is lost (`dpo_edu.checkpoint`): a checkpoint is written when due, when Ctrl-C (SIGINT) arrives
    (after the current step), and never from a non-finite loss: that stops the run with TrainingStopped and the last
    good checkpoint stays. `resume=True` ends with the metrics an uninterrupted run would have.
    """
    hooks = _hooks(hooks, hook_settings)
    seed_everything(config.seed)
    inputs = _training_inputs(model, tokenizer, examples, config, reference, hooks)
    accelerator = make_accelerator(config)
    train_loader = pair_loader(
        inputs.features, config.micro_batch_size, pad_token_id(tokenizer), shuffle=True, seed=config.seed
    )
    # left in reverse: checkpointing as it was, bar closed, file closed, SIGINT's handler back, the model as it was
    with contextlib.ExitStack() as stack:
        stack.enter_context(left_as_it_was(model))
        loop = _set_up(stack, accelerator, model, tokenizer, train_loader, config, inputs, hooks)
        return loop.history if len(loop.history) >= loop.total_steps else _train_steps(loop, config, hooks)


def _hooks(hooks: TrainHooks | None, settings: dict) -> TrainHooks:
    if hooks is not None and settings:
        raise TypeError(
            f"train_dpo: pass hooks=TrainHooks(...) or its fields as keywords, not both ({sorted(settings)})"
        )
    return hooks if hooks is not None else TrainHooks(**settings)


@dataclasses.dataclass
class _Inputs:
    examples: list[dict[str, Any]]  # the usable ones
    features: list[dict]
    offsets: torch.Tensor | None  # ODPO's, (N,)
    saved: checkpoints.Checkpoint | None  # the checkpoint to resume from
    reference: tuple[torch.Tensor, torch.Tensor] | None  # (N,) chosen, (N,) rejected


def _training_inputs(model, tokenizer, examples, config: TrainConfig, reference, hooks: TrainHooks) -> _Inputs:
    """The checks that come before any work, the usable examples tokenised, ODPO's offsets, the checkpoint to resume."""
    if not examples:
        raise ValueError("no training examples")
    if hooks.resume and hooks.checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder of the run to continue")
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError(
            "no trainable parameter: requires_grad is False for every parameter of the model (frozen "
            "like a reference?); call model.requires_grad_(True), or add adapters (dpo_edu.lora)"
        )
    saved = checkpoints.load_latest(hooks.checkpoint_dir, config) if hooks.resume else None
    examples, features = usable_examples(tokenizer, examples, config, log=hooks.log)
    offsets = (
        pair_offsets(examples, config.odpo_alpha, config.odpo_score_scale) if config.odpo_alpha is not None else None
    )
    reference = saved.reference_logps() if saved is not None else reference
    if reference is not None and not all(len(logps) == len(examples) for logps in reference):
        raise ValueError(
            f"reference log-probs for {[len(logps) for logps in reference]} pairs, but {len(examples)} usable examples"
        )
    return _Inputs(examples, features, offsets, saved, reference)


@dataclasses.dataclass
class _Loop:
    """Everything the training loop touches, set up by `_set_up`."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    shuffle_generator: torch.Generator  # its state at an epoch's start fixes that epoch's order
    reference: tuple[torch.Tensor, torch.Tensor] | None
    offsets: torch.Tensor | None
    state: checkpoints.TrainerState
    total_steps: int
    metrics: StepMetrics
    save: Callable[[], Path | None]  # a checkpoint now; None where this process keeps none
    # the contexts the loop runs in, entered by `_set_up` unless there is nothing left to train
    interrupted: Callable[[], bool] | None = None
    metrics_file: Any = None
    bar: Any = None

    @property
    def history(self) -> list[dict]:
        return self.state.history


def _set_up(stack, accelerator, model, tokenizer, train_loader, config, inputs: _Inputs, hooks: TrainHooks) -> _Loop:
    """Prepare model, optimizer and loaders, the reference's log-probs (before any update), the schedule, the
    resumed state, and the contexts the loop runs in (entered on `stack`)."""
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    shuffle_generator = train_loader.generator
    reference = inputs.reference
    model, optimizer, train_loader, reference_loader = accelerator.prepare(
        model, adamw(model, config), train_loader, _reference_loader(inputs.features, config, pad_token_id(tokenizer))
    )
    if reference is None and config.loss_type not in REFERENCE_FREE:
        with accelerator.autocast(), adapters_disabled(accelerator.unwrap_model(model)):
            reference = reference_logps(model, reference_loader, accelerator)  # before any update: the reference
    total_steps = planned_steps(len(inputs.features), config, accelerator.num_processes)
    # not passed to accelerator.prepare: we step it once per optimizer step ourselves
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=capped_warmup(config.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )
    state = checkpoints.TrainerState(history=[], epoch_generator_state=shuffle_generator.get_state())
    if inputs.saved is not None:
        state = checkpoints.resume(
            inputs.saved, accelerator.unwrap_model(model), optimizer, scheduler, metrics_path=hooks.metrics_path
        )
        if hooks.log is not None:
            hooks.log(f"resumed from step {len(state.history)} of {total_steps} ({hooks.checkpoint_dir})")
    keeps_checkpoints = hooks.checkpoint_dir is not None and accelerator.is_main_process  # one process writes them
    save = functools.partial(
        checkpoints.save,
        hooks.checkpoint_dir,
        accelerator.unwrap_model(model),
        optimizer,
        scheduler,
        config=config,
        reference=reference,
        state=state,
    )
    loop = _Loop(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        shuffle_generator=shuffle_generator,
        reference=reference,
        offsets=inputs.offsets,
        state=state,
        total_steps=total_steps,
        metrics=StepMetrics(accelerator),
        save=save if keeps_checkpoints else lambda: None,
    )
    if len(state.history) >= total_steps:
        return loop
    model.train()
    loop.interrupted = stack.enter_context(checkpoints.interrupt_flag())
    loop.metrics_file = (
        stack.enter_context(open(hooks.metrics_path, "a", encoding="utf-8")) if hooks.metrics_path else None
    )
    show = hooks.progress and accelerator.is_main_process
    loop.bar = stack.enter_context(tqdm(total=total_steps, initial=len(state.history), desc="DPO", disable=not show))
    stack.enter_context(activation_checkpointing(accelerator.unwrap_model(model), config.gradient_checkpointing))
    stack.enter_context(sparse_embedding_gradient(accelerator.unwrap_model(model)))
    return loop


def _train_steps(loop: _Loop, config: TrainConfig, hooks: TrainHooks) -> list[dict[str, float]]:
    """The loop: a micro-batch's loss, backward and (when the accumulation is complete) an optimizer step, then the
    step's record, its checkpoint when due, and a stop on Ctrl-C."""
    accelerator, model, history = loop.accelerator, loop.model, loop.history
    for epoch, batch in _micro_batches(
        accelerator, loop.train_loader, loop.shuffle_generator, loop.state, config.epochs
    ):
        with accelerator.accumulate(model):
            out = pair_losses(model, batch, loop.reference, loop.offsets, config, accelerator)
            step = len(history) + 1
            _stop_unless_finite(accelerator, out.loss, step=step, epoch=epoch, checkpoint_dir=hooks.checkpoint_dir)
            accelerator.backward(out.loss)
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            loop.optimizer.step()
            loop.optimizer.zero_grad()
        loop.metrics.add(out, batch["attention_mask"])
        if not accelerator.sync_gradients:
            continue
        lr = loop.scheduler.get_last_lr()[0]
        record = loop.metrics.record(step=step, steps_total=loop.total_steps, epoch=epoch, grad_norm=grad_norm, lr=lr)
        loop.scheduler.step()
        _write_step(record, history, bar=loop.bar, on_step=hooks.on_step, metrics_file=loop.metrics_file)
        loop.metrics.start()  # after on_step: its evaluations are not training time
        done, stop = len(history) >= loop.total_steps, loop.interrupted()
        due = done or stop or (hooks.checkpoint_every and len(history) % hooks.checkpoint_every == 0)
        where = loop.save() if due else None
        if stop:
            saved = f"; checkpoint saved in {where}: continue with resume=True (dpo-edu run --resume)" if where else ""
            raise TrainingStopped(f"interrupted after step {len(history)} of {loop.total_steps}{saved}")
        if done:
            return history
    loop.save()  # the position is past the last epoch
    return history
