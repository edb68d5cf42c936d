"""LoRA with train_dpo (dpo_edu.lora) on a tiny random Llama: only the adapters train, and the reference is the
base model with the adapters disabled, bit for bit."""
import copy
import math

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs peft (pip install peft)")

from dpo_edu.checkpoint import load_latest  # noqa: E402
from dpo_edu.lora import add_lora, is_peft_model, merged, trainable_parameters  # noqa: E402
from dpo_edu.train import TrainConfig, compute_pair_logps, pair_logps, train_dpo, usable_examples  # noqa: E402

EXAMPLES = [
    {"prompt": f"Review {i}:", "chosen": f" lovely film number {i}, warm and funny.", "rejected": f" dull film {i}."}
    for i in range(10)
]
# 10 pairs / 4 = 3 steps (the last one short); LoRA takes a larger learning rate than full fine-tuning; float32, as
# the expectations below are (the reference bit for bit, merged weights within float32 rounding)
CONFIG = dict(learning_rate=1e-2, batch_size=4, gradient_accumulation_steps=2, epochs=1, warmup_steps=0,
              max_length=48, max_prompt_length=16, mixed_precision="fp32", seed=5)
RANK = 4
MERGE_TOLERANCE = 1e-4  # nats per sequence: merging W + s*B@A changes fp32 rounding, nothing else


@pytest.fixture(scope="module")
def tiny_lora(tiny_model):
    """tiny_lora(): conftest's tiny_model with rank-4 adapters (B = 0: it starts as the base model)."""
    return lambda: add_lora(tiny_model(), r=RANK, alpha=2 * RANK)


def all_logps(model, tokenizer) -> torch.Tensor:
    """Sequence log-probs of every pair, chosen then rejected, in one batch, as the model is now (eval mode)."""
    from dpo_edu.data import collate_preferences
    from dpo_edu.utils import pad_token_id

    _, features = usable_examples(tokenizer, EXAMPLES, TrainConfig(**CONFIG), log=None)
    batch = collate_preferences(features, pad_token_id(tokenizer))
    model.eval()
    with torch.no_grad():
        return torch.cat(pair_logps(model, batch))


@pytest.fixture(scope="module")
def trained(tokenizer, tiny_lora):
    """A LoRA policy after 3 steps, the weights it started from, and its metrics."""
    model = tiny_lora()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    history = train_dpo(model, tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None)
    assert len(history) == 3
    return model, before, history


def test_only_the_adapters_are_trainable(tiny_lora, tiny_model):
    base_total = sum(p.numel() for p in tiny_model().parameters())
    model = tiny_lora()
    # r * (in + out) per projection: q 32+32, k 32+16, v 32+16, o 32+32, gate 32+64, up 32+64, down 64+32 = 512; 2 layers
    assert trainable_parameters(model) == (RANK * 512 * 2, base_total + RANK * 512 * 2)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    assert is_peft_model(model) and not is_peft_model(tiny_model())


def test_lora_starts_at_the_reference_and_changes_only_the_adapters(trained):
    model, before, history = trained
    # B = 0 at the start: the policy is the reference, so step 1 is ln 2 with zero margin, exactly
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert history[0]["rewards/margins"] == 0.0
    assert history[-1]["loss"] < math.log(2) - 1e-3  # and it did train
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(parameter, before[name]), name
        else:
            assert torch.equal(parameter, before[name]), name  # the base: bit-identical
    assert all(p.abs().max() > 0 for name, p in model.named_parameters() if "lora_B" in name)


def test_with_adapters_disabled_the_policy_is_the_reference_exactly(tokenizer, trained, tiny_model):
    model = trained[0]
    reference = all_logps(tiny_model(), tokenizer)  # a fresh copy of the base weights, no peft at all
    with model.disable_adapter():
        assert torch.equal(all_logps(model, tokenizer), reference)
    assert (all_logps(model, tokenizer) - reference).abs().max() > 1e-3  # adapters on: the trained policy


def test_train_dpo_takes_the_reference_of_a_trained_adapter_from_the_base_model(tokenizer, trained, tmp_path, tiny_model):
    """Training an already-trained adapter further: the reference must be the base model, not the current policy."""
    model = copy.deepcopy(trained[0])
    config = TrainConfig(**{**CONFIG, "max_steps": 1})
    history = train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path)
    expected = compute_pair_logps(tiny_model(), tokenizer, EXAMPLES, config)  # same loader, plain base model
    saved = load_latest(tmp_path, config).reference
    assert torch.equal(saved[0], expected[0]) and torch.equal(saved[1], expected[1])
    assert abs(history[0]["rewards/margins"]) > 1e-4  # the policy already differs from its reference at step 1


def test_merged_policy_loads_without_peft_and_gives_the_same_logps(tokenizer, trained, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = trained[0]
    policy = all_logps(model, tokenizer)
    plain = merged(model)
    assert type(plain) is LlamaForCausalLM and not any("lora" in key for key in plain.state_dict())
    plain.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LlamaForCausalLM
    assert torch.allclose(all_logps(loaded, tokenizer), policy, rtol=0, atol=MERGE_TOLERANCE)
    assert torch.equal(all_logps(model, tokenizer), policy)  # merged() worked on a copy: the PeftModel is untouched
    with pytest.raises(TypeError, match="PeftModel"):
        merged(loaded)


def test_a_lora_run_resumes_from_its_checkpoint_like_an_uninterrupted_run(tokenizer, trained, tmp_path, tiny_lora):
    def crash(record):
        if record["step"] == 2:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_dpo(tiny_lora(), tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                  checkpoint_dir=tmp_path, checkpoint_every=1, on_step=crash)
    resumed_model = tiny_lora()
    resumed = train_dpo(resumed_model, tokenizer, EXAMPLES, TrainConfig(**CONFIG), progress=False, log=None,
                        checkpoint_dir=tmp_path, resume=True)
    expected = trained[2]
    assert len(resumed) == len(expected)
    for got, want in zip(resumed, expected):
        for key in want:
            if key != "tokens_per_second":
                assert got[key] == pytest.approx(want[key], abs=1e-6), (got["step"], key)
    for (name, got), want in zip(resumed_model.named_parameters(), trained[0].parameters()):
        assert torch.allclose(got, want, rtol=0, atol=1e-6), name


def test_resume_with_a_model_set_up_otherwise_says_so(tokenizer, tmp_path, tiny_lora, tiny_model):
    from dpo_edu.checkpoint import CheckpointError

    config = TrainConfig(**{**CONFIG, "max_steps": 1})
    train_dpo(tiny_lora(), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"trained with adapters .*'r': 4.* has no adapters \(full fine-tuning\).*add_lora"):
        train_dpo(tiny_model(), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"'r': 4.*has adapters .*'r': 8"):
        train_dpo(add_lora(tiny_model(), r=8), tokenizer, EXAMPLES, config, progress=False, log=None,
                  checkpoint_dir=tmp_path, resume=True)


def test_lora_and_activation_checkpointing_use_no_deprecated_transformers_name(tokenizer, tiny_lora, tiny_model):
    """transformers 5.25 deprecates gradient_checkpointing_enable/disable and is_gradient_checkpointing (FutureWarning,
    gone in v6): setting up LoRA and training with checkpointing must not call them (peft's own call is silenced)."""
    import warnings

    def checkpointing(model):
        return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())

    config = TrainConfig(**{**CONFIG, "max_steps": 1, "gradient_checkpointing": True})
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("error", message=r".*gradient_checkpointing.*deprecated", category=category)
        for model in (tiny_model(), tiny_lora()):
            during = []
            train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None,
                      on_step=lambda record: during.append(checkpointing(model)))
            assert during == [True] and not checkpointing(model)  # on for the run, off again after
