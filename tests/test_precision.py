"""bf16 autocast on the real model: what it changes in the log-probs, and what it must not change (step 1).

bf16 is emulated on CPUs without AVX512-BF16 or AMX, so these forward passes
are slow there, but only a few short sequences are needed.
"""
import math

import pytest
import torch

from dpo_edu.data import collate_preferences, tokenize_preference
from dpo_edu.train import TrainConfig, pair_logps, train_dpo

PAIRS = [  # two short pairs, then two long ones: batches of 2 in another order pad them to other widths
    {"prompt": "Was the ending good?", "chosen": " Yes.", "rejected": " No."},
    {"prompt": "In short:", "chosen": " a triumph.", "rejected": " a mess."},
    {"prompt": "Describe the film in one line.", "chosen": " A warm, funny story about two brothers who rebuild a boat and their lives.",
     "rejected": " A long, loud and empty film that forgets its own plot halfway through and never finds it again."},
    {"prompt": "Bring tissues to Velvet Summer, because", "chosen": " it will break your heart and mend it again, slowly, scene by scene.",
     "rejected": " the cinema is cold, the seats are hard and the film is three hours of people staring at the sea."},
]
# Measured on SmolLM2-135M-Instruct (these 8 sequences, an AVX2 CPU, bf16 emulated): bf16 moved the
# sequence log-probs, which lie between -9 and -96 nats, by at most 0.22 nats; the tolerance is 1 nat.
BF16_TOLERANCE_NATS = 1.0


def test_bf16_and_fp32_logps_agree_on_the_real_model(real_model):
    model, tokenizer = real_model
    batch = collate_preferences([tokenize_preference(tokenizer, pair, use_chat_template=False) for pair in PAIRS], tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        fp32 = torch.cat(pair_logps(model, batch))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.cat(pair_logps(model, batch))
    assert bf16.dtype == fp32.dtype == torch.float32  # log-probs are summed in float32 either way
    difference = (bf16 - fp32).abs()
    print(f"fp32 log-probs {fp32.tolist()}\nbf16 - fp32 {(bf16 - fp32).tolist()}")
    assert difference.max() < BF16_TOLERANCE_NATS
    assert difference.max() > 0  # bf16 did run: the check above is not fp32 against itself


def test_first_step_is_ln2_in_bf16_on_the_real_model():
    """Reference and policy log-probs of step 1 come from the same batch: exactly equal in bf16 too."""
    from dpo_edu.models import load_model

    model, tokenizer = load_model(device="cpu")  # a copy of its own, to train
    # Step 1's loss comes from its forward pass: one small trainable weight at the top spares the backward pass through
    # the 30 layers below, in emulated bf16 (24 s of the test's 33 s on an AVX2 CPU)
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    config = TrainConfig(beta=0.1, learning_rate=1e-5, batch_size=2, max_steps=1, warmup_steps=0, max_length=64,
                         max_prompt_length=32, use_chat_template=False, mixed_precision="bf16", seed=1)
    history = train_dpo(model, tokenizer, PAIRS, config, progress=False, log=None)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
