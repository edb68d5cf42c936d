"""dpo_edu.clinic: the faults notebook 09 reproduces, each on a tiny random Llama, and its small measurements."""
import math

import pytest
import torch

from dpo_edu import clinic
from dpo_edu.bandit import train_tabular_dpo
from dpo_edu.diagnosis import diagnose
from dpo_edu.train import TrainConfig, train_dpo
from conftest import REVIEW_PAIRS

CONFIG = TrainConfig(beta=0.5, learning_rate=5e-3, batch_size=4, epochs=1, warmup_steps=0, max_length=16,
                     max_prompt_length=8, mixed_precision="fp32", use_chat_template=False, seed=0)


def run_fault(tokenizer, tinier_model, tmp_path, fault, steps=3):
    model = tinier_model().eval()
    path = tmp_path / f"{fault}.jsonl"
    history = clinic.faulty_steps(model, tokenizer, REVIEW_PAIRS, CONFIG, fault=fault, steps=steps, metrics_path=path)
    return model, history, path


def test_a_live_reference_keeps_the_loss_at_ln2_while_the_weights_move(tokenizer, tinier_model, tmp_path):
    model, history, path = run_fault(tokenizer, tinier_model, tmp_path, "live_reference")
    assert [row["loss"] for row in history] == pytest.approx([math.log(2)] * 3, abs=1e-7)
    assert all(row["rewards/margins"] == 0 and row["grad_norm"] > 0 for row in history)
    assert len({round(row["logps/chosen"], 4) for row in history}) == 3  # the policy moves
    assert not model.training  # back in its own mode
    finding = diagnose(path).findings[0]
    assert finding.found and "the reference moves with the policy" in finding.detail


def test_every_label_masked_scores_nothing_and_has_no_gradient(tokenizer, tinier_model, tmp_path):
    model, history, path = run_fault(tokenizer, tinier_model, tmp_path, "masked_labels")
    assert all(row["loss"] == pytest.approx(math.log(2), abs=1e-7) for row in history)
    assert all(row["grad_norm"] == 0 and row["logps/chosen"] == 0 == row["logps/rejected"] for row in history)
    assert "every label is masked" in diagnose(path).findings[0].detail


def test_pure_fp16_gives_nan_from_the_second_step_and_leaves_float32_weights(tokenizer, tinier_model, tmp_path):
    model, history, path = run_fault(tokenizer, tinier_model, tmp_path, "pure_fp16")
    assert math.isfinite(history[0]["loss"]) and math.isnan(history[1]["loss"])
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    nan = diagnose(path).findings[3]
    assert nan.found and nan.steps == (2, 3)


def test_an_unknown_fault_is_one_line(tokenizer, tinier_model):
    with pytest.raises(ValueError, match=r"^unknown fault 'nan'; known: live_reference, masked_labels, pure_fp16$"):
        clinic.faulty_steps(tinier_model(), tokenizer, REVIEW_PAIRS, CONFIG, fault="nan", steps=1)


def test_sft_steps_report_the_mean_nll_per_chosen_token_and_lower_it(tokenizer, tinier_model):
    model = tinier_model()
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 8, "learning_rate": 1e-2})
    before = clinic.policy_logps(model, tokenizer, REVIEW_PAIRS, config)[0]
    losses = [clinic.sft_steps(model, tokenizer, REVIEW_PAIRS, config)[0] for _ in range(3)]
    assert losses[0] > losses[-1]
    assert clinic.policy_logps(model, tokenizer, REVIEW_PAIRS, config)[0].sum() > before.sum()


def test_the_held_out_hook_logs_the_held_out_dpo_loss_every_k_steps_and_at_the_last(tokenizer, tinier_model):
    model = tinier_model()
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 2})  # 4 steps
    heldout = REVIEW_PAIRS[:4]
    reference = clinic.policy_logps(model, tokenizer, heldout, config)
    hook = clinic.heldout_loss(model, tokenizer, heldout, reference, config, every=3)
    history = train_dpo(model, tokenizer, REVIEW_PAIRS, config, on_step=hook, progress=False, log=None)
    assert [row["step"] for row in history if "eval/loss" in row] == [3, 4]
    expected = clinic.dpo_metrics(clinic.policy_logps(model, tokenizer, heldout, config), reference, config.beta)
    assert history[-1]["eval/loss"] == pytest.approx(expected["loss"], abs=1e-6)


def test_fp16_first_update_counts_underflow_and_adam_zero_over_zero():
    """1e-9 is 0 in float16 (0/0); 1e-4 survives but its square does not (g/0 = inf); 1e-3 and its square survive."""
    result = clinic.fp16_first_update([torch.tensor([1e-9, 1e-3, 1e-4]), torch.tensor([0.0])])
    assert result == {"underflow": pytest.approx(1 / 3), "underflow_scaled": 0.0, "update_not_finite": 0.75,
                      "eps_in_fp16": 0.0}


def test_repetition_length_gap_and_a_shorter_reward(tokenizer):
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(words(" a b a b")) == 4 and len(set(words(" one two three"))) == 3
    assert clinic.repetition([" a b a b", " one two three"], tokenizer) == pytest.approx((1 / 3 + 0) / 2)
    newlines = "\n" * 40  # no words at all, and the most repetitive text there is
    assert clinic.repetition([newlines], tokenizer) > 0.8
    assert clinic.repetition(["", "."], tokenizer) == 0.0
    gap, se = clinic.length_gap(tokenizer, [{"chosen": " a b c", "rejected": " a"}, {"chosen": " a", "rejected": " a"}])
    assert gap == pytest.approx(1.0) and se == pytest.approx(1.0)
    reward = clinic.shorter_is_better(0.1, reward=lambda prompts, completions, **_: [1.0] * len(completions))
    assert reward(["p", "p"], ["one two", "one two three four"]) == pytest.approx([0.8, 0.6])


def test_on_the_bandit_the_pairs_gradient_depends_on_the_log_ratios_alone():
    """The claim notebook 09 §7 makes: at the same log-ratios, two references give the same DPO gradient."""
    from dpo_edu.losses import dpo_loss

    chosen, rejected = torch.tensor([4, 5, 5]), torch.tensor([3, 3, 4])
    log_ratios = torch.tensor([0.3, -0.2, 0.1, -1.0, 0.4, 1.5], dtype=torch.float64)
    gradients = []
    for reference in (torch.tensor([0.40, 0.30, 0.20, 0.08, 0.01, 0.01], dtype=torch.float64),
                      torch.tensor([0.05, 0.05, 0.05, 0.15, 0.30, 0.40], dtype=torch.float64)):
        logits = (reference.log() + log_ratios).requires_grad_(True)
        policy = torch.log_softmax(logits, -1)
        ref = reference.log()
        dpo_loss(policy[chosen], policy[rejected], ref[chosen], ref[rejected], 1.0)[0].mean().backward()
        gradients.append(logits.grad)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-12) and gradients[0].abs().max() > 0.01
    results = clinic.sft_first_bandit()
    assert results["SFT reference"]["reward"] > results["instruct reference"]["reward"]
    assert results["instruct reference"]["reference_kl"] == 0


def test_log_lines_show_the_chosen_steps_rounded():
    history = [{"step": 1, "loss": 0.69314718, "lr": 0.0}, {"step": 2, "loss": 0.5, "lr": 1e-4}]
    text = clinic.log_lines(history, keys=("loss", "lr", "eval/loss"), steps=[2])
    assert text.splitlines() == [f"{'step':>4} {'loss':>9} {'lr':>9} {'eval_loss':>9}",
                                 f"{2:>4} {0.5:>9.4f} {1e-4:>9.2e} {'':>9}"]


def test_clinic_config_reads_the_profile():
    from dpo_edu.config import get_profile

    profile = get_profile("smoke")
    config = clinic.clinic_config(profile, epochs=1)
    assert (config.beta, config.batch_size, config.epochs, config.mixed_precision) == (
        profile.clinic_beta, profile.clinic_batch_size, 1, "fp32")
