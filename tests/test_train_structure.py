"""The trainer's parts on their own: the planned steps in every record, StepMetrics, the precision mapping,
checkpoint.save's all-or-nothing write, the training forward's cache and embedding gradient (a tiny random Llama
where a model is needed)."""
import contextlib
import json
import math

import pytest
import torch

from dpo_edu import checkpoint
from dpo_edu.data import collate_preferences, tokenize_preference
from dpo_edu.train import (StepMetrics, TrainConfig, pair_logps, planned_steps, sparse_embedding_gradient, train_dpo,
                           usable_examples)

EXAMPLES = [
    {"prompt": f"Review {i}:", "chosen": f" lovely film number {i}, warm and funny.", "rejected": f" dull film {i}."}
    for i in range(7)
]
LONG_PROMPT = {"prompt": "word " * 60 + "end:", "chosen": " good.", "rejected": " bad."}  # kept, its prompt cut
SEAM = {"prompt": "It was", "chosen": "n't good", "rejected": " fine"}  # skipped: "was" + "n't" change at the seam
SMALL = dict(learning_rate=1e-3, warmup_steps=1, max_length=48, max_prompt_length=16, use_chat_template=False, seed=5)


@pytest.mark.parametrize("examples, settings, steps", [
    # 9 examples, 1 skipped: 8 usable pairs, 3 micro-batches of 1 a step: 3 steps an epoch, the last short
    (EXAMPLES + [LONG_PROMPT, SEAM], dict(batch_size=3, gradient_accumulation_steps=3, epochs=2), 6),
    # stopped by max_steps in the second epoch of 4 steps
    (EXAMPLES, dict(batch_size=2, epochs=3, max_steps=5), 5),
])
def test_every_record_has_steps_total_and_the_last_step_reaches_it(tokenizer, tinier_model, tmp_path, examples, settings,
                                                                     steps):
    config = TrainConfig(**SMALL, **settings)
    seen = []
    history = train_dpo(tinier_model(), tokenizer, examples, config, progress=False, log=None,
                        metrics_path=tmp_path / "metrics.jsonl", on_step=lambda record: seen.append(dict(record)))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == len(lines) == len(seen) == steps
    for records in (history, lines, seen):
        assert [record["step"] for record in records] == list(range(1, steps + 1))
        assert {record["steps_total"] for record in records} == {steps}
    usable, _ = usable_examples(tokenizer, examples, config, log=None)
    assert planned_steps(len(usable), config) == steps


def test_hooks_as_one_object_or_as_keywords_give_the_same_run_and_not_both(tokenizer, tinier_model, tmp_path):
    from dpo_edu.train import TrainHooks

    config = TrainConfig(**SMALL, batch_size=4)
    by_keywords = train_dpo(tinier_model(), tokenizer, EXAMPLES, config, progress=False, log=None,
                            metrics_path=tmp_path / "a.jsonl")
    hooks = TrainHooks(progress=False, log=None, metrics_path=tmp_path / "b.jsonl")
    by_object = train_dpo(tinier_model(), tokenizer, EXAMPLES, config, hooks=hooks)
    drop_timing = [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in by_keywords]
    assert drop_timing == [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in by_object]
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == len(by_object) == 2
    with pytest.raises(TypeError, match="not both"):
        train_dpo(tinier_model(), tokenizer, EXAMPLES, config, hooks=hooks, progress=False)
    with pytest.raises(TypeError, match="checkpoint_evry"):
        train_dpo(tinier_model(), tokenizer, EXAMPLES, config, checkpoint_evry=2)


def test_the_training_loop_reads_at_once():
    """The loop itself (`_train_steps`) stays about 40 lines; set-up and hooks live elsewhere (issue 28)."""
    import ast
    import inspect

    from dpo_edu import train

    for function, most in ((train._train_steps, 40), (train.train_dpo, 40)):
        node = ast.parse(inspect.getsource(function)).body[0]
        assert node.end_lineno - node.lineno + 1 <= most, function.__name__


def test_planned_steps_counts_short_steps_shards_and_max_steps():
    config = TrainConfig(batch_size=4, gradient_accumulation_steps=2, epochs=3)  # micro-batches of 2
    assert planned_steps(10, config) == 3 * 3  # 5 micro-batches: steps of 2, 2 and 1
    assert planned_steps(10, config, processes=2) == 3 * 2  # 3 micro-batches each (accelerate evens them out)
    assert planned_steps(10, TrainConfig(batch_size=4, gradient_accumulation_steps=2, epochs=3, max_steps=4)) == 4
    assert planned_steps(1, TrainConfig(batch_size=8, epochs=2, max_steps=50)) == 2


class OneProcess:
    """What StepMetrics asks of an Accelerator, in one process: gather returns its argument."""

    def gather(self, tensors):
        return tensors


def test_step_metrics_are_the_mean_over_micro_batches_of_the_mean_over_pairs():
    from dpo_edu.train import PairLosses

    metrics = StepMetrics(OneProcess())
    for losses, chosen, rejected in [([1.0, 3.0], [0.5, 0.1], [0.0, 0.3]), ([5.0], [0.0], [1.0])]:  # a short second micro-batch
        losses, chosen, rejected = torch.tensor(losses), torch.tensor(chosen), torch.tensor(rejected)
        metrics.add(PairLosses(losses, chosen, rejected, -chosen, -rejected, losses.mean()), torch.ones(2 * len(losses), 7))
    record = metrics.record(step=3, steps_total=9, epoch=1, grad_norm=torch.tensor(0.25), lr=1e-4)
    assert record["step"] == 3 and record["steps_total"] == 9 and record["epoch"] == 1
    assert record["loss"] == pytest.approx((2.0 + 5.0) / 2)  # not (1 + 3 + 5) / 3
    assert record["rewards/margins"] == pytest.approx(((0.5 - 0.0 + 0.1 - 0.3) / 2 + (0.0 - 1.0)) / 2)
    assert record["rewards/accuracies"] == pytest.approx((0.5 + 0.0) / 2)
    assert record["logps/chosen"] == pytest.approx(-(0.3 + 0.0) / 2)
    assert record["grad_norm"] == 0.25 and record["lr"] == 1e-4 and record["tokens_per_second"] > 0
    metrics.start()
    assert metrics.sums == {} and metrics.micro_batches == 0 and metrics.tokens == 0


@pytest.mark.parametrize("bf16_cpu", [True, False])
def test_one_precision_mapping_for_the_accelerator_and_the_reference_pass(monkeypatch, bf16_cpu):
    from dpo_edu import precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: bf16_cpu)
    cpu = torch.device("cpu")
    auto = torch.bfloat16 if bf16_cpu else None
    expected = {"auto": auto, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert {setting: precision.precision_dtype(cpu, setting) for setting in precision.PRECISIONS} == expected
    names = {None: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}  # accelerate's
    assert {setting: precision.accelerate_mixed_precision(setting, cpu) for setting in precision.PRECISIONS} == {
        setting: names[dtype] for setting, dtype in expected.items()}


def parts(model):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=4)


def test_a_checkpoint_that_fails_half_way_leaves_the_previous_one_and_no_temporary(tinier_model, tmp_path, monkeypatch):
    model, optimizer, scheduler = parts(tinier_model())
    state = checkpoint.TrainerState(history=[{"step": 1}], epoch_generator_state=torch.Generator().get_state())
    config = TrainConfig()
    first = checkpoint.save(tmp_path, model, optimizer, scheduler, config=config, reference=None, state=state)
    state.history.append({"step": 2})

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)  # optimizer.pt: after the weights, before trainer_state.json
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path, model, optimizer, scheduler, config=config, reference=None, state=state)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", "step-000001"]
    assert checkpoint.latest_folder(tmp_path) == first and checkpoint.verify(first)["step"] == 1
    saved = checkpoint.load_latest(tmp_path, config)
    assert saved.reference_logps() is None and math.isclose(saved.state["scheduler"]["base_lrs"][0], 1e-3)


def pair_batch(tokenizer, examples=EXAMPLES[:3]):
    features = [tokenize_preference(tokenizer, example, max_length=48, max_prompt_length=16, use_chat_template=False)
                for example in examples]
    return collate_preferences(features, tokenizer.pad_token_id)


def test_the_training_forward_builds_no_kv_cache(tokenizer, tinier_model):
    """transformers builds a KV cache in any forward whose model config has use_cache on (SmolLM2's has, and
    LlamaConfig's default): pair_logps generates nothing and asks for none."""
    model = tinier_model()
    outputs = []
    model.register_forward_hook(lambda module, args, output: outputs.append(output))
    pair_logps(model, pair_batch(tokenizer))
    assert model.config.use_cache and len(outputs) == 1
    assert getattr(outputs[0], "cache", None) is None and getattr(outputs[0], "past_key_values", None) is None


@pytest.mark.parametrize("tied, frozen, sparse_inside", [(True, False, True), (False, False, False), (True, True, False)])
def test_a_tied_embedding_gives_its_gradient_sparse_and_the_weight_gets_the_same_dense_sum(tokenizer, tinier_model, tied,
                                                                                           frozen, sparse_inside):
    """Inside sparse_embedding_gradient a trainable tied embedding looks up with sparse=True, and autograd adds its
    rows into the LM head's dense gradient (the padding token's row gets none, as in the dense backward). An untied
    embedding would end with a sparse .grad (fused AdamW refuses it), a frozen one has none: both are left alone."""
    model = tinier_model(tie_word_embeddings=tied)
    model.get_input_embeddings().weight.requires_grad_(not frozen)
    batch = pair_batch(tokenizer)
    assert (batch["input_ids"] == tokenizer.pad_token_id).any()  # the padding_idx row: no gradient from the lookup
    gradients = []
    for context in (contextlib.nullcontext(), sparse_embedding_gradient(model)):
        model.zero_grad()
        with context:
            inside = model.get_input_embeddings().sparse
            sum(pair_logps(model, batch)).sum().backward()
        gradients.append(model.get_input_embeddings().weight.grad)
    assert inside is sparse_inside and model.get_input_embeddings().sparse is False
    if frozen:
        assert gradients == [None, None]
        return
    dense, through_sparse = gradients
    assert through_sparse.layout == torch.strided
    torch.testing.assert_close(through_sparse, dense, rtol=1e-5, atol=1e-6)  # the same sum, in another order


def test_a_batch_with_every_label_masked_scores_zero_instead_of_crashing(tokenizer, tinier_model):
    """Custom features whose responses were masked away (the trainer's own truncation never makes them): each
    sequence log-prob is a sum over no tokens, 0, as the diagnose exercise's run A logs; it used to be an IndexError."""
    batch = pair_batch(tokenizer)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    chosen, rejected = pair_logps(tinier_model(), batch)
    assert torch.equal(chosen, torch.zeros(3)) and torch.equal(rejected, torch.zeros(3))
