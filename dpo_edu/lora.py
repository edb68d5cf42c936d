"""LoRA for DPO with `peft`: train small adapters, keep the base weights frozen.

Why: full fine-tuning keeps, for every weight, its gradient and AdamW's two
moments (three more copies of the model in fp32). LoRA (Hu et al. 2021) freezes
the base weights W and learns a low-rank update W + (alpha / r) B A on the
chosen projections, so only A and B get gradients and optimizer state: for
SmolLM2-135M at r=16 on all seven projections, 4.9M trainable parameters instead of 135M.
`benchmarks/lora_memory.py` measures what that saves.

The reference comes for free: it is the base model, i.e. the same PeftModel
with its adapters disabled (`model.disable_adapter()`), so no second copy of
the weights is kept. peft initialises B to zero, so before the first update
the policy (adapters on) equals the reference (adapters off) exactly and DPO's
first loss is ln 2. `train.train_dpo` takes a PeftModel as it is: the optimizer
sees only the trainable parameters, and the reference log-probs are computed
with the adapters disabled.

    from dpo_edu.lora import add_lora, merged
    model = add_lora(model)                       # r=16, alpha=32
    train_dpo(model, tokenizer, pairs, config)
    merged(model).save_pretrained("policy")       # loads with AutoModelForCausalLM

peft is imported only when a function here is called.
"""

from __future__ import annotations

import copy
import warnings

import torch

# every linear layer in a SmolLM2 / Llama decoder block: attention and MLP
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=LLAMA_PROJECTIONS):
    """Wrap `model` in a peft PeftModel with LoRA adapters of rank `r` on `target_modules`; return it.

    The base weights are frozen (requires_grad False) and stay the reference:
    with adapters disabled the PeftModel is the original model. B starts at
    zero, so the policy starts equal to the reference. The update is scaled by
    alpha / r. `model` itself is modified (adapters are injected into its
    layers): keep no other reference to it.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # PeftModel's __init__ (peft 0.21) reads model.is_gradient_checkpointing, which transformers 5.25 deprecates
        # for is_activation_checkpointing: peft's call, on the only way to a PeftModel, so only that warning is muted
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; a weight shared by two layers (tied embeddings) counts once."""
    trainable = total = 0
    for parameter in model.parameters():  # parameters() yields each shared tensor once
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def is_peft_model(model) -> bool:
    """Whether `model` is a peft PeftModel (checked without importing peft when it is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@torch.no_grad()
def merged(model, *, inplace: bool = False):
    """The trained policy as a plain transformers model: W + (alpha / r) B A folded into each weight, adapters gone.

    Its `save_pretrained` folder loads with `AutoModelForCausalLM.from_pretrained`
    (no peft needed). By default the PeftModel is copied first, so it keeps
    working (and its reference, the base weights, stays intact); `inplace=True`
    merges into the PeftModel's own weights, saving one copy of the model, after
    which the PeftModel must not be used again.
    """
    if not is_peft_model(model):
        raise TypeError(f"merged() needs a peft PeftModel (from add_lora), got {type(model).__name__}")
    return (model if inplace else copy.deepcopy(model)).merge_and_unload()
