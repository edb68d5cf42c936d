"""The Bradley-Terry reward model (dpo_edu.reward_model), on tiny random Llamas with the real tokenizer."""
import dataclasses
import math

import pytest
import torch

from conftest import REVIEW_PAIRS
from dpo_edu.generation import sample_completions
from dpo_edu.reward_model import (RewardConfig, RewardModelFunction, bradley_terry_loss, compare_rewards,
                                  implicit_pair_rewards, pair_accuracy, rank_agreement, reward_model_from,
                                  reward_row_ids, score, spearman, train_reward_model)
from dpo_edu.rewards import checked_rewards
from dpo_edu.train import TrainingStopped

FP32 = dict(mixed_precision="fp32")


def test_bad_settings_fail_in_one_line_naming_each_field():
    expected = (r"^invalid RewardConfig: learning_rate must be > 0, got -1\.0; batch_size must be >= 1, got 0; "
                r"mixed_precision 'fp64' is not one of")
    with pytest.raises(ValueError, match=expected) as error:
        RewardConfig(batch_size=0, learning_rate=-1.0, mixed_precision="fp64")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="epochs must be int, got 1.5"):
        RewardConfig(epochs=1.5)
    with pytest.raises(ValueError, match="center_rewards_coefficient must be >= 0"):
        RewardConfig(center_rewards_coefficient=-0.1)


def test_the_loss_is_bradley_terry_plus_trls_centring_term_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    by_hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2  # -log sigmoid(d) = log(1 + e^-d)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(by_hand, rel=1e-6)
    centred = by_hand + 0.1 * (1.0 ** 2 + 2.0 ** 2) / 2
    assert bradley_terry_loss(chosen, rejected, 0.1).item() == pytest.approx(centred, rel=1e-6)


def test_the_head_reads_the_last_token_before_padding_and_eos(tokenizer, tinier_model):
    policy = tinier_model()
    model = reward_model_from(policy, tokenizer).eval()
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    body = dict(model.model.named_parameters())
    assert all(torch.equal(value, body[name]) for name, value in policy.model.named_parameters())
    prompts, completions = ["Review:", "Verdict?"], [" Lovely, warm and funny.", " Dull."]
    batched = score(model, tokenizer, prompts, completions, batch_size=2)  # the short row is padded
    alone = torch.cat([score(model, tokenizer, [p], [c]) for p, c in zip(prompts, completions)])
    assert torch.allclose(batched, alone, atol=1e-5)
    ids = reward_row_ids(tokenizer, prompts[1], completions[1])
    assert ids[-1] == tokenizer.eos_token_id
    with torch.no_grad():  # SmolLM2 pads with EOS: the head reads the completion's last token, as TRL's reward model
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -2]
    assert model.score(hidden).item() == pytest.approx(alone[1].item(), abs=1e-5)


def test_the_course_model_loads_with_a_fresh_head_quietly(real_model, capfd):
    from dpo_edu.reward_model import load_reward_model

    policy, tokenizer = real_model
    model, _ = load_reward_model(device="cpu")
    assert "LOAD REPORT" not in capfd.readouterr().err  # the missing head is expected, not worth a warning
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    again, _ = load_reward_model(device="cpu")
    assert torch.equal(model.score.weight, again.score.weight)  # the head is drawn under the seed


def test_a_few_steps_separate_the_pairs_deterministically_and_keep_the_models_mode(tokenizer, tinier_model):
    config = RewardConfig(learning_rate=1e-2, batch_size=4, epochs=4, **FP32)
    runs = []
    for _ in range(2):
        model = reward_model_from(tinier_model(), tokenizer).eval()
        runs.append(train_reward_model(model, tokenizer, REVIEW_PAIRS, config))
        assert not model.training
    first, again = runs
    assert [r["loss"] for r in first] == [r["loss"] for r in again] and len(first) == 8
    assert first[-1]["loss"] < first[0]["loss"] - 0.1
    prompts = [pair["prompt"] for pair in REVIEW_PAIRS]
    chosen = score(model, tokenizer, prompts, [pair["chosen"] for pair in REVIEW_PAIRS])
    rejected = score(model, tokenizer, prompts, [pair["rejected"] for pair in REVIEW_PAIRS])
    assert pair_accuracy(chosen.tolist(), rejected.tolist())["accuracy"] == 1.0
    assert set(first[0]) >= {"step", "steps_total", "loss", "accuracy", "margin", "grad_norm", "lr", "seconds"}


def test_a_frozen_body_trains_only_the_head_on_features_computed_once(tokenizer, tinier_model):
    """train_body=False: the head reads the same features the full forward pass would (the step losses match a
    head trained through the whole model with the body frozen), and the body's weights do not move."""
    config = RewardConfig(learning_rate=1e-2, batch_size=4, epochs=2, train_body=False, **FP32)
    cached = reward_model_from(tinier_model(), tokenizer)
    body = {name: value.clone() for name, value in cached.model.state_dict().items()}
    head = cached.score.weight.detach().clone()
    history = train_reward_model(cached, tokenizer, REVIEW_PAIRS, config)
    assert all(torch.equal(value, cached.model.state_dict()[name]) for name, value in body.items())
    assert not torch.equal(head, cached.score.weight)
    through = reward_model_from(tinier_model(), tokenizer)
    through.model.requires_grad_(False)  # the same head, trained through the full forward pass
    again = train_reward_model(through, tokenizer, REVIEW_PAIRS, dataclasses.replace(config, train_body=True))
    assert [r["loss"] for r in history] == pytest.approx([r["loss"] for r in again], abs=1e-5)
    assert torch.allclose(cached.score.weight, through.score.weight, atol=1e-5)


def test_on_step_adds_to_the_record_and_a_nan_loss_stops_before_the_update(tokenizer, tinier_model):
    model = reward_model_from(tinier_model(), tokenizer)
    history = train_reward_model(model, tokenizer, REVIEW_PAIRS[:4], RewardConfig(batch_size=2, **FP32),
                                 on_step=lambda record: {"eval/x": record["step"] * 10})
    assert [r["eval/x"] for r in history] == [10, 20]
    weight = model.score.weight.detach().clone()
    model.score.weight.data.fill_(math.nan)
    with pytest.raises(TrainingStopped, match="non-finite loss \\(nan\\) at step 1") as error:
        train_reward_model(model, tokenizer, REVIEW_PAIRS[:4], RewardConfig(batch_size=2, **FP32))
    assert error.value.history == [] and not torch.equal(weight, model.score.weight)


def test_the_reward_function_follows_trls_convention(tokenizer, tinier_model):
    model = reward_model_from(tinier_model(), tokenizer)
    reward = RewardModelFunction(model, tokenizer)
    prompts, texts = ["Review:", "Verdict?"], [" Lovely.", " Dull."]
    plain = checked_rewards(reward, prompts, texts)
    chat = reward(prompts=prompts, completions=[[{"role": "assistant", "content": text}] for text in texts])
    assert plain == chat == score(model, tokenizer, prompts, texts).tolist()
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="no pad_token_id"):
        reward(prompts=prompts, completions=texts)


def test_spearman_and_rank_agreement_by_hand():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))  # tied ranks 1.5, 1.5, 3
    assert math.isnan(spearman([1, 1], [1, 2]))
    # within each prompt perfectly ordered, but a constant per prompt (beta log Z(x)) scrambles the overall ranking
    truth, shifted = [0.1, 0.2, 0.3, 0.4], [10.1, 10.2, 0.3, 0.4]
    agreement = rank_agreement(shifted, truth, per_prompt=2)
    assert agreement["spearman_within"] == 1.0 and agreement["spearman"] == pytest.approx(spearman(shifted, truth))
    assert agreement["spearman"] < 0.5
    with pytest.raises(ValueError, match="groups of 3"):
        rank_agreement(truth, truth, per_prompt=3)


def test_implicit_and_learned_rewards_side_by_side(tokenizer, tinier_model):
    policy, reference = tinier_model(seed=1), tinier_model()
    same_w, same_l = implicit_pair_rewards(reference, reference, tokenizer, REVIEW_PAIRS, beta=0.1)
    assert not same_w.any() and not same_l.any()  # the policy is the reference: every implicit reward is 0
    samples = sample_completions(reference, tokenizer, ["Review:", "Verdict?"], per_prompt=2, max_new_tokens=4)
    result = compare_rewards(reward_model_from(tinier_model(), tokenizer), policy, reference, tokenizer,
                             REVIEW_PAIRS, samples, [0.1, 0.2, 0.3, 0.4], beta=0.1)
    assert set(result) == {"reward_model", "implicit"}
    for row in result.values():
        assert set(row) == {"accuracy", "margin", "margin_se", "n", "spearman", "spearman_within"} and row["n"] == 8


def test_every_step_matches_trls_reward_trainer(tokenizer, tinier_model, tmp_path):
    """8 pairs in one batch (the order cannot differ), 4 steps, TRL's centring term on; float32, no warm-up."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    # transformers 5.25's name for it; older ones have only gradient_checkpointing (see dpo_edu.trl_bridge)
    names = {field.name for field in dataclasses.fields(trl.RewardConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    config = RewardConfig(learning_rate=5e-3, batch_size=8, epochs=4, center_rewards_coefficient=0.1, **FP32)
    ours = train_reward_model(reward_model_from(tinier_model(), tokenizer), tokenizer, REVIEW_PAIRS, config)
    args = trl.RewardConfig(output_dir=str(tmp_path), learning_rate=5e-3, per_device_train_batch_size=8, max_steps=4,
                            lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
                            center_rewards_coefficient=0.1, bf16=False, fp16=False, use_cpu=True,
                            logging_steps=1, **{checkpointing: False}, report_to=[], save_strategy="no",
                            disable_tqdm=True, dataloader_pin_memory=False, seed=0, max_length=None)
    trainer = trl.RewardTrainer(model=reward_model_from(tinier_model(), tokenizer), args=args,
                                train_dataset=Dataset.from_list(REVIEW_PAIRS), processing_class=tokenizer)
    trainer.train()
    theirs = [record for record in trainer.state.log_history if "loss" in record]
    assert len(theirs) == len(ours) == 4
    for mine, trls in zip(ours, theirs):
        assert mine["loss"] == pytest.approx(trls["loss"], abs=1e-4), (mine["step"], mine["loss"], trls["loss"])
        assert mine["grad_norm"] == pytest.approx(trls["grad_norm"], rel=1e-3)
    assert len({round(record["loss"], 4) for record in ours}) == 4
