"""dpo-edu's trainer and TRL's DPOTrainer train the same tiny model the same way (and where they differ, how).

One tiny random Llama (float32, no dropout), 8 pairs in one batch of 8 (so the
batch order cannot differ), 5 optimizer steps with a 2-step linear warm-up (the
schedule's step 1 has lr 0, so steps 3, 4, 5 show 1, 2, 3 updates). The
DPOConfig comes from `dpo_edu.trl_bridge.to_dpo_config`, so the field table is
what is tested. TRL computes its reference log-probs once
(precompute_ref_log_probs=True), as dpo-edu always does. Measured differences
are about 1e-6 (float32 rounding); the tolerance is 1e-4.
"""
import dataclasses

import pytest
import torch

trl = pytest.importorskip("trl")

from dpo_edu.data import IGNORE_INDEX  # noqa: E402
from dpo_edu.losses import dpo_loss  # noqa: E402
from dpo_edu.train import TrainConfig, compute_pair_logps, train_dpo, usable_examples  # noqa: E402
from dpo_edu.trl_bridge import TRL_FIELDS, markdown_table, to_dpo_config  # noqa: E402
from conftest import REVIEW_PAIRS  # noqa: E402

# Prompts of 2 to 4 tokens, responses of 3 to 8 with EOS: rows are padded, IPO's length normalisation matters, and
# max_length 9 cuts the end (EOS included) of 5 of the 16 rows, in both trainers; no prompt is longer than max_prompt_length.
EXAMPLES = REVIEW_PAIRS
BASE = dict(beta=0.5, learning_rate=5e-3, weight_decay=0.0, batch_size=8, epochs=5, warmup_steps=2, max_grad_norm=1.0,
            max_length=9, max_prompt_length=4, mixed_precision="fp32", use_chat_template=False, seed=0)
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def train_trl(model, tokenizer, config, output_dir, ref_model=None, **overrides):
    """TRL's per-step log records (those with rewards), training `model` with `config` carried over."""
    from datasets import Dataset

    args = to_dpo_config(config, output_dir, report_to=[], save_strategy="no", disable_tqdm=True,
                         train_sampling_strategy="sequential", dataloader_pin_memory=False, **overrides)
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=args,
                             train_dataset=Dataset.from_list(EXAMPLES), processing_class=tokenizer)
    trainer.train()
    return [record for record in trainer.state.log_history if "rewards/chosen" in record]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_pairs_are_padded_and_some_are_truncated(tokenizer):
    kept, features = usable_examples(tokenizer, EXAMPLES, TrainConfig(**BASE), log=None)
    rows = [feature[side] for feature in features for side in ("chosen", "rejected")]
    assert len(kept) == len(EXAMPLES) and not any(row["prompt_truncated"] for row in rows)
    assert len({len(row["input_ids"]) for row in rows}) > 1
    assert sum(row["input_ids"][-1] != tokenizer.eos_token_id for row in rows) == 5  # cut at max_length, EOS lost


@pytest.mark.parametrize("settings", [
    dict(loss_type="sigmoid"),
    dict(loss_type="hinge"),
    dict(loss_type="ipo"),
    dict(loss_type="robust", label_smoothing=0.1),
    dict(loss_type="sigmoid", sft_weight=0.5),  # RPO; TRL: loss_type=["sigmoid", "sft"], loss_weights=[1, 0.5]
], ids=["sigmoid", "hinge", "ipo", "robust", "sigmoid+sft"])
def test_every_step_matches_trl(tokenizer, tiny_model, tmp_path, settings):
    config = TrainConfig(**BASE, **settings)
    ours = train_dpo(tiny_model(), tokenizer, EXAMPLES, config, progress=False, log=None)
    theirs = train_trl(tiny_model(), tokenizer, config, tmp_path)
    assert len(ours) == len(theirs) == 5
    assert len({round(record["loss"], 6) for record in ours}) >= 4  # the steps after the warm-up's lr = 0 do move it
    for step, (mine, trls) in enumerate(zip(ours, theirs), start=1):
        for name in COMPARED:
            assert mine[name] == pytest.approx(trls[name], abs=1e-4), (step, name, mine[name], trls[name])
        for name in ("logps/chosen", "logps/rejected", "grad_norm"):
            assert mine[name] == pytest.approx(trls[name], rel=1e-4), (step, name, mine[name], trls[name])


def test_trl_ipo_divides_the_log_ratios_by_length(tokenizer, tiny_model, tmp_path):
    """TRL 1.16's IPO is dpo_loss's IPO with response lengths (what dpo-edu's trainer passes), not the paper's sums.

    A reference unlike the policy (another seed), so the log-ratios are not 0 at step 1 (with h = 0 both forms give
    (1 / (2 beta))^2). Only TRL's step-1 loss is needed: it is computed before any update.
    """
    config = TrainConfig(**{**BASE, "epochs": 1}, loss_type="ipo")
    reference = tiny_model(seed=1)
    theirs = train_trl(tiny_model(), tokenizer, config, tmp_path, ref_model=reference)[0]["loss"]
    policy_chosen, policy_rejected = compute_pair_logps(tiny_model(), tokenizer, EXAMPLES, config)
    ref_chosen, ref_rejected = compute_pair_logps(reference, tokenizer, EXAMPLES, config)
    _, features = usable_examples(tokenizer, EXAMPLES, config, log=None)
    chosen_lengths, rejected_lengths = (torch.tensor([float(sum(label != IGNORE_INDEX for label in feature[side]["labels"]))
                                                      for feature in features]) for side in ("chosen", "rejected"))
    assert not torch.equal(chosen_lengths, rejected_lengths)
    logps = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    summed = dpo_loss(*logps, config.beta, loss_type="ipo")[0].mean().item()  # the paper's form: lengths None
    per_token = dpo_loss(*logps, config.beta, loss_type="ipo", chosen_lengths=chosen_lengths,
                         rejected_lengths=rejected_lengths)[0].mean().item()
    assert per_token == pytest.approx(theirs, abs=1e-4)
    assert abs(summed - theirs) > 1e-2, (summed, theirs)  # 1.128 vs 1.003 here: 100 times the tolerance and more


def test_settings_without_a_trl_equivalent_raise_naming_the_field(tmp_path):
    for settings, field in [
        (dict(loss_type="sigmoid", label_smoothing=0.1), "label_smoothing"),  # cDPO: TRL 1.16's sigmoid has no smoothing
        (dict(odpo_alpha=1.0), "odpo_alpha"),
        (dict(loss_type="simpo"), "loss_type 'simpo'"),
        (dict(loss_type="orpo"), "loss_type 'orpo'"),
    ]:
        with pytest.raises(ValueError, match=field):
            to_dpo_config(TrainConfig(**settings), tmp_path)
    robust = to_dpo_config(TrainConfig(loss_type="robust", label_smoothing=0.1), tmp_path)  # robust carries over
    assert (robust.loss_type, robust.label_smoothing) == (["robust"], 0.1)
    rpo = to_dpo_config(TrainConfig(sft_weight=0.5), tmp_path)
    assert (rpo.loss_type, rpo.loss_weights) == (["sigmoid", "sft"], [1.0, 0.5])


def test_the_table_names_every_trainconfig_field_and_only_real_dpoconfig_fields():
    dpo_fields = {field.name for field in dataclasses.fields(trl.DPOConfig)}
    train_fields = [field.name for field in dataclasses.fields(TrainConfig)]
    rows = [row.train_config for row in TRL_FIELDS]
    assert sorted(name for name in rows if name != "(always)") == sorted(train_fields)  # each field once
    for row in TRL_FIELDS:
        assert set(row.dpo_config) <= dpo_fields, (row.train_config, set(row.dpo_config) - dpo_fields)
        assert row.note
    table = markdown_table().splitlines()
    assert len(table) == 2 + len(TRL_FIELDS) and all(line.count(" | ") == 2 for line in table[2:])
