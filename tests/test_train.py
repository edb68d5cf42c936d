"""The trainer on a tiny random Llama (fast); the full run on the real model is notebook 06's job."""
import contextlib
import dataclasses
import json
import math
import os
import signal

import pytest
import torch

from dpo_edu.train import METRIC_NAMES, TrainConfig, TrainingStopped, train_dpo
from conftest import tiny_llama

EXAMPLES = [
    {"prompt": "Review:", "chosen": "A wonderful film, I loved it.", "rejected": "Awful and dull."},
    {"prompt": "Your verdict?", "chosen": "Moving and beautiful.", "rejected": "A boring mess from start to end."},
    {"prompt": "Was it good?", "chosen": "Yes, a delight.", "rejected": "No."},
    {"prompt": "One line on the plot:", "chosen": "Two friends rebuild a boat and their lives.", "rejected": "Stuff happens, then more stuff."},
]


def tiny_model(tokenizer, seed=0):
    """A 2-layer Llama of hidden size 32 with the tokenizer's vocabulary (conftest's `tiny_llama`)."""
    return tiny_llama(len(tokenizer), seed=seed)


def test_first_step_is_ln2_with_zero_margins_and_loss_falls(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    config = TrainConfig(beta=0.1, learning_rate=5e-3, batch_size=4, epochs=30, warmup_steps=0, max_length=64, max_prompt_length=48)
    history = train_dpo(model, tokenizer, EXAMPLES, config, metrics_path=tmp_path / "metrics.jsonl", progress=False)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert history[-1]["loss"] < 0.5 * math.log(2) and history[-1]["rewards/accuracies"] == 1.0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(history) == 30
    assert all(set(METRIC_NAMES) <= set(line) for line in lines)
    assert all(math.isfinite(line["grad_norm"]) and line["tokens_per_second"] > 0 for line in lines)


def test_gradient_accumulation_matches_one_big_batch(tokenizer):
    """batch 4 in one go == 2 micro-batches of 2 (accelerate scales the loss), after one step."""
    weights = []
    for accumulation in (1, 2):
        model = tiny_model(tokenizer, seed=1)
        config = TrainConfig(learning_rate=1e-3, batch_size=4, gradient_accumulation_steps=accumulation, max_steps=1,
                             warmup_steps=0, max_length=64, max_prompt_length=48, mixed_precision="fp32", seed=3)
        history = train_dpo(model, tokenizer, EXAMPLES, config, progress=False)
        assert len(history) == 1
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_same_seed_same_metrics(tokenizer):
    runs = []
    for _ in range(2):
        config = TrainConfig(learning_rate=1e-3, batch_size=2, epochs=2, warmup_steps=1, max_length=64, max_prompt_length=48, seed=7)
        runs.append(train_dpo(tiny_model(tokenizer, seed=2), tokenizer, EXAMPLES, config, progress=False))
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 0}, "beta must be > 0"),
        ({"loss_type": "kto"}, "unknown loss_type 'kto' \\(known: sigmoid, robust, ipo, hinge, simpo, orpo\\)"),
        ({"loss_type": 3}, r"loss_type must be a string, got 3"),
        ({"sft_weight": -0.5}, r"sft_weight must be >= 0, got -0.5"),
        ({"loss_type": "simpo", "simpo_gamma": -1.0}, r"simpo_gamma must be >= 0"),
        ({"mixed_precision": "fp8"}, "not one of: auto, fp32, bf16, fp16"),
        ({"mixed_precision": "no"}, "not one of: auto, fp32, bf16, fp16 \\(accelerate's 'no' is the course's 'fp32'\\)"),
        ({"batch_size": 6, "gradient_accumulation_steps": 4}, "multiple of gradient_accumulation_steps"),
        ({"max_prompt_length": 200, "max_length": 128}, "max_prompt_length"),
        ({"odpo_alpha": -1.0}, "odpo_alpha must be None"),
        ({"odpo_alpha": 1.0, "loss_type": "ipo"}, r"ODPO offset \(odpo_alpha\) needs loss_type 'sigmoid'"),
        ({"max_grad_norm": -1}, r"max_grad_norm must be > 0, got -1"),  # trained backwards: loss 0.69 -> 7.7 in 4 steps
        ({"max_grad_norm": float("nan")}, r"max_grad_norm must be a finite number, got nan"),
        ({"learning_rate": float("inf")}, r"learning_rate must be a finite number, got inf"),
        ({"beta": float("inf")}, r"beta must be a finite number, got inf"),
        ({"epochs": 1.5}, r"epochs must be an int, got 1.5 \(float\)"),
        ({"batch_size": "8"}, r"batch_size must be an int, got '8' \(str\)"),
        ({"seed": True}, r"seed must be an int, got True \(bool\)"),
        ({"seed": -1}, r"seed must be in \[0, 4294967296\), got -1"),  # numpy's seed range
        ({"warmup_steps": -5}, r"warmup_steps must be >= 0, got -5"),
        ({"weight_decay": -1}, r"weight_decay must be >= 0, got -1"),
        ({"max_steps": 2.5}, r"max_steps must be None or an int, got 2.5"),
        ({"use_chat_template": "yes"}, r"use_chat_template must be None or True or False, got 'yes' \(str\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, r"label_smoothing applies to loss_type 'sigmoid' \(cDPO\) or 'robust' only"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, r"label_smoothing applies to loss_type 'sigmoid' \(cDPO\) or 'robust' only"),
    ],
)
def test_bad_config_fails_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("field", [field.name for field in dataclasses.fields(TrainConfig)])
def test_every_field_is_checked_in_one_line_naming_it(field):
    with pytest.raises(ValueError, match=rf"^invalid TrainConfig: {field}\b[^\n]*$"):
        TrainConfig(**{field: object()})


def test_all_problems_are_reported_together_without_a_type_error():
    with pytest.raises(ValueError) as error:
        TrainConfig(beta=0, epochs=1.5, batch_size="8", gradient_accumulation_steps=2, max_length="64", loss_type="kto")
    message = str(error.value)
    for field in ("beta", "epochs", "batch_size", "max_length", "loss_type"):
        assert f"{field} " in message
    assert message.count(";") == 4  # five problems, one line


SCORED = [dict(example, chosen_score=0.9 - 0.3 * i, rejected_score=-0.5 + 0.1 * i) for i, example in enumerate(EXAMPLES)]
ODPO_CONFIG = dict(learning_rate=1e-3, batch_size=2, epochs=2, warmup_steps=1, max_length=64, max_prompt_length=48, seed=7)


def test_precomputed_reference_logps_give_the_same_run(tokenizer):
    from dpo_edu.train import compute_pair_logps

    config = TrainConfig(**ODPO_CONFIG)
    reference = compute_pair_logps(tiny_model(tokenizer, seed=2), tokenizer, EXAMPLES, config)
    assert reference[0].shape == reference[1].shape == (len(EXAMPLES),)
    computed = train_dpo(tiny_model(tokenizer, seed=2), tokenizer, EXAMPLES, config, progress=False)
    reused = train_dpo(tiny_model(tokenizer, seed=2), tokenizer, EXAMPLES, config, progress=False, reference=reference)
    assert [r["loss"] for r in reused] == pytest.approx([r["loss"] for r in computed], abs=1e-6)
    with pytest.raises(ValueError, match="reference log-probs for"):
        train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, reference=(reference[0][:2], reference[1][:2]))


def test_odpo_offsets_enter_the_loss_and_alpha_zero_is_dpo(tokenizer):
    from dpo_edu.losses import odpo_offset

    dpo = train_dpo(tiny_model(tokenizer, seed=2), tokenizer, SCORED, TrainConfig(**ODPO_CONFIG), progress=False)
    alpha_zero = train_dpo(tiny_model(tokenizer, seed=2), tokenizer, SCORED, TrainConfig(**ODPO_CONFIG, odpo_alpha=0.0), progress=False)
    assert [r["loss"] for r in alpha_zero] == pytest.approx([r["loss"] for r in dpo], abs=1e-6)
    odpo = train_dpo(tiny_model(tokenizer, seed=2), tokenizer, SCORED, TrainConfig(**ODPO_CONFIG, odpo_alpha=1.0), progress=False)
    # step 1: policy == reference, so every pair's loss is -log sigmoid(-offset); the batch of 2 is a shuffle of the 4 pairs
    offsets = odpo_offset([e["chosen_score"] for e in SCORED], [e["rejected_score"] for e in SCORED], 1.0)
    per_pair = torch.nn.functional.softplus(offsets)  # -log sigmoid(-x) = softplus(x)
    possible = {round((per_pair[i] + per_pair[j]).item() / 2, 5) for i in range(4) for j in range(i + 1, 4)}
    assert round(odpo[0]["loss"], 5) in possible and odpo[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)


def test_odpo_without_scores_names_the_example_and_field(tokenizer):
    broken = [dict(SCORED[0]), dict(SCORED[1], rejected_score=float("nan"))]
    with pytest.raises(ValueError, match=r"example 1, field 'rejected_score'"):
        train_dpo(tiny_model(tokenizer), tokenizer, broken, TrainConfig(**ODPO_CONFIG, odpo_alpha=1.0), progress=False)
    with pytest.raises(ValueError, match=r"example 0, field 'chosen_score'"):
        train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, TrainConfig(**ODPO_CONFIG, odpo_alpha=1.0), progress=False)


# Pairs of very different lengths: the reference pass and step 1 see different padding
# unless the reference is computed in the training order (bf16 rounding depends on it).
UNEVEN = EXAMPLES + [
    {"prompt": "Tell me about the film in one long sentence, please:", "chosen": "It is a gentle, funny and moving story of two old friends who rebuild a boat.",
     "rejected": "Meh."},
    {"prompt": "Score?", "chosen": "Nine out of ten.", "rejected": "Two out of ten, and I was being generous to a film that never decides what it is."},
]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_step_is_ln2_exactly_in_bf16_too(tokenizer, precision):
    """The reference log-probs come from the batches of step 1 themselves: the same rows, padding and arithmetic."""
    config = TrainConfig(beta=0.1, learning_rate=1e-3, batch_size=2, max_steps=2, warmup_steps=0, max_length=64,
                         max_prompt_length=48, mixed_precision=precision, seed=5)
    history = train_dpo(tiny_model(tokenizer, seed=4), tokenizer, UNEVEN, config, progress=False, log=None)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert history[0]["rewards/chosen"] == history[0]["rewards/rejected"] == 0.0


def test_bf16_autocast_keeps_float32_master_weights_and_losses(tokenizer):
    model = tiny_model(tokenizer, seed=4)
    config = TrainConfig(learning_rate=1e-3, batch_size=2, max_steps=2, warmup_steps=0, max_length=64, max_prompt_length=48,
                         mixed_precision="bf16")
    history = train_dpo(model, tokenizer, UNEVEN, config, progress=False, log=None)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert history[1]["loss"] != history[0]["loss"] and all(math.isfinite(record["loss"]) for record in history)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from dpo_edu import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.resolve("auto", cpu) == "bf16" and precision.precision_dtype(cpu, "fp32") is None
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert precision.resolve("auto", cpu) == "fp32" and precision.resolve("bf16", cpu) == "bf16"


# ---- the variants through the trainer ----

@pytest.mark.parametrize("loss_type, extra", [("robust", {"label_smoothing": 0.1}), ("ipo", {}), ("hinge", {}),
                                              ("sigmoid", {"sft_weight": 1.0}), ("simpo", {"beta": 2.0}), ("orpo", {})])
def test_every_variant_trains(tokenizer, loss_type, extra):
    config = TrainConfig(**{"beta": 0.1, **extra}, loss_type=loss_type, learning_rate=5e-3, batch_size=4, epochs=8,
                         warmup_steps=0, max_length=64, max_prompt_length=48)
    history = train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, log=None)
    assert all(math.isfinite(record["loss"]) for record in history)
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"]
    if loss_type in ("simpo", "orpo"):  # no reference: the rewards are beta * average log-probs, negative from step 1
        assert history[0]["rewards/chosen"] < 0 and history[0]["rewards/margins"] != 0
    else:
        assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_reference_free_variants_skip_the_reference_pass(tokenizer, monkeypatch):
    import dpo_edu.train as train

    calls = []
    monkeypatch.setattr(train, "reference_logps", lambda *args, **kwargs: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    config = TrainConfig(loss_type="simpo", beta=2.0, batch_size=4, max_steps=1, warmup_steps=0, max_length=64, max_prompt_length=48)
    history = train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, log=None)
    assert len(history) == 1 and calls == []


def test_the_trainer_passes_response_lengths(tokenizer):
    """Lengths are the response tokens (EOS included): SimPO's first loss is its formula on the model's own log-probs."""
    from dpo_edu.data import IGNORE_INDEX, collate_preferences, split_chosen_rejected, tokenize_preference
    from dpo_edu.train import pair_logps
    from dpo_edu.utils import pad_token_id

    import torch.nn.functional as F

    config = TrainConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5, batch_size=4, max_steps=1, warmup_steps=0,
                         max_length=64, max_prompt_length=48, mixed_precision="fp32")  # `expected` is float32
    model = tiny_model(tokenizer, seed=4)
    features = [tokenize_preference(tokenizer, example, max_length=64, max_prompt_length=48) for example in EXAMPLES]
    batch = collate_preferences(features, pad_token_id(tokenizer))
    with torch.no_grad():
        chosen, rejected = pair_logps(model, batch)
    chosen_lengths, rejected_lengths = split_chosen_rejected((batch["labels"] != IGNORE_INDEX).sum(1))
    expected = -F.logsigmoid(2.0 * (chosen / chosen_lengths - rejected / rejected_lengths) - 0.5).mean()
    history = train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None)
    assert history[0]["loss"] == pytest.approx(expected.item(), abs=1e-5)


def test_reference_free_run_checkpoints_and_resumes(tokenizer, tmp_path):
    """A SimPO run has no reference log-probs: its checkpoint stores none, and resuming does not ask for them."""
    config = TrainConfig(loss_type="simpo", beta=2.0, learning_rate=1e-3, batch_size=2, epochs=2, warmup_steps=0,
                         max_length=64, max_prompt_length=48)
    whole = train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, log=None)
    def crash_at_step_3(record):
        if record["step"] == 3:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):  # checkpoints of steps 1 and 2 are on disk
        train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path,
                  checkpoint_every=1, on_step=crash_at_step_3)
    resumed = train_dpo(tiny_model(tokenizer), tokenizer, EXAMPLES, config, progress=False, log=None, checkpoint_dir=tmp_path, resume=True)
    assert [round(r["loss"], 6) for r in resumed] == [round(r["loss"], 6) for r in whole]


# ---- the caller's model after train_dpo ----

def press_ctrl_c_at_step_1(record):
    if record["step"] == 1:
        os.kill(os.getpid(), signal.SIGINT)


def crash_at_step_1(record):
    if record["step"] == 1:
        raise RuntimeError("crash")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("ending, on_step, error", [
    ("finished", None, None),
    ("an error", crash_at_step_1, RuntimeError),
    ("Ctrl-C", press_ctrl_c_at_step_1, TrainingStopped),
])
def test_after_bf16_training_the_model_has_its_own_forward_and_mode(tokenizer, mode, ending, on_step, error):
    """accelerate wraps model.forward in autocast under mixed precision: left there, every later call of the caller's
    model ran in bf16 (its logits 2.5e-3 from the same weights reloaded), and the model stayed in train mode."""
    model = tiny_model(tokenizer, seed=4).train(mode == "train")
    config = TrainConfig(learning_rate=1e-3, batch_size=2, max_steps=2, warmup_steps=0, max_length=64, max_prompt_length=48,
                         mixed_precision="bf16")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; CI may ignore SIGINT
    try:
        with pytest.raises(error) if error else contextlib.nullcontext():
            train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None, on_step=on_step)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert model.training is (mode == "train"), ending
    assert vars(model).keys().isdisjoint({"forward", "_original_forward", "_is_accelerate_prepared"}), ending
    assert model.get_input_embeddings().sparse is False, ending  # sparse only while training (sparse_embedding_gradient)
    reloaded = tiny_model(tokenizer).train(mode == "train")
    reloaded.load_state_dict(model.state_dict())
    ids = torch.tensor([tokenizer("A wonderful film, I loved it.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits), ending
        # the class's forward with its decorators (accelerate's unwrap_model(keep_fp32_wrapper=False) drops them)
        assert isinstance(model(input_ids=ids, return_dict=False), tuple), ending


def test_the_sparse_embedding_gradient_is_on_while_training_and_changes_no_number(tokenizer, monkeypatch):
    """The tied embedding's gradient comes sparse during training (dpo_edu.train.sparse_embedding_gradient, a speed
    lever): the same run, to float32 rounding, as with the dense gradient."""
    from dpo_edu import train

    runs = []
    for lever in (True, False):
        if not lever:
            monkeypatch.setattr(train, "sparse_embedding_gradient", lambda model: contextlib.nullcontext())
        model = tiny_model(tokenizer, seed=5)
        config = TrainConfig(learning_rate=1e-3, batch_size=2, epochs=2, warmup_steps=1, max_length=64, max_prompt_length=48,
                             gradient_accumulation_steps=2, mixed_precision="fp32")
        history = train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None,
                            on_step=lambda record: {"sparse": model.get_input_embeddings().sparse})
        runs.append((history, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (lever_history, lever_weights), (dense_history, dense_weights) = runs
    assert [record["sparse"] for record in lever_history] == [True] * 4 and not dense_history[0]["sparse"]
    for name in ("loss", "grad_norm", "logps/chosen", "rewards/margins"):
        assert [r[name] for r in lever_history] == pytest.approx([r[name] for r in dense_history], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(lever_weights, dense_weights, rtol=1e-5, atol=1e-7)


def test_the_reference_pass_leaves_the_model_in_its_own_mode_after_ctrl_c(tokenizer):
    from dpo_edu.train import compute_pair_logps

    model = tiny_model(tokenizer).train()
    handle = model.register_forward_pre_hook(lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        compute_pair_logps(model, tokenizer, EXAMPLES, TrainConfig(max_length=64, max_prompt_length=48))
    handle.remove()
    assert model.training


# ---- the warm-up of a short run ----

@pytest.mark.parametrize("pairs", [1, 3])
def test_a_run_of_one_step_trains_whatever_the_warm_up(tokenizer, pairs):
    """No more pairs than one batch is one optimizer step; a warm-up as long as the run gave that step lr 0."""
    model = tiny_model(tokenizer)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    config = TrainConfig(learning_rate=1e-3, batch_size=4, warmup_steps=10, max_length=64, max_prompt_length=48,
                         mixed_precision="fp32")
    history = train_dpo(model, tokenizer, EXAMPLES[:pairs], config, progress=False, log=None)
    assert len(history) == 1 and history[0]["lr"] == 1e-3
    assert any(not torch.equal(parameter, old) for parameter, old in zip(model.parameters(), before))


def schedule(warmup: int, total: int) -> list[float]:
    """The learning rate of each of `total` steps of the linear schedule with `warmup` steps, as train_dpo steps it."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_the_warm_up_is_capped_below_the_run_and_longer_runs_keep_their_schedule():
    from dpo_edu.train import capped_warmup

    for total in range(1, 13):
        for warmup in range(0, 13):
            lrs = schedule(capped_warmup(warmup, total), total)
            assert max(lrs) > 0, (warmup, total)  # every run trains
            if total > warmup:  # as before the cap: the same numbers, bit for bit
                assert lrs == schedule(min(warmup, total), total), (warmup, total)


def test_a_model_with_every_parameter_frozen_is_refused_in_one_line(tokenizer):
    """requires_grad False everywhere (a policy frozen like a reference) stops before any work, saying so."""
    model = tiny_model(tokenizer).requires_grad_(False)
    config = TrainConfig(learning_rate=1e-3, batch_size=2, max_length=64, max_prompt_length=48, mixed_precision="fp32")
    with pytest.raises(ValueError, match=r"^no trainable parameter: requires_grad is False .*requires_grad_\(True\)"):
        train_dpo(model, tokenizer, EXAMPLES, config, progress=False, log=None)
