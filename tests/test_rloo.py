"""RLOO (dpo_edu.rloo): its loss by hand, bad settings, and a few steps on a tiny two-word bandit.

The bandit: a tiny random Llama fine-tuned (Preferred-FT, a second) to continue four prompts with " good" or " bad"
words, so a reward that counts "good" has samples to tell apart; a random tiny model spreads its probability over
all 49,152 tokens, and no reward on a few of them would ever see one sampled.
"""
import pytest
import torch

from dpo_edu.evaluate import completion_logps
from dpo_edu.generation import sample_completions
from dpo_edu.reward_model import RewardModelFunction, reward_model_from
from dpo_edu.rloo import RLOOConfig, leave_one_out_advantages, rloo_loss, samples_logps, train_rloo
from dpo_edu.sft import SFTConfig, train_sft

PROMPTS = ["Review:", "Verdict?", "Was it good?", "The plot:"]
SETTINGS = dict(beta=0.0, k=4, prompts_per_step=4, steps=6, max_new_tokens=3, learning_rate=1e-2, mixed_precision="fp32")


def goods(prompts, completions, **kwargs):
    return [float(text.count("good")) for text in completions]


@pytest.fixture(scope="module")
def two_word_weights(tokenizer):
    from conftest import tiny_llama

    model = tiny_llama(len(tokenizer), hidden_size=16, layers=1)
    examples = [{"prompt": prompt, "chosen": reply} for prompt in PROMPTS for reply in (" good good", " bad bad")]
    train_sft(model, tokenizer, examples, SFTConfig(learning_rate=3e-2, epochs=20, mixed_precision="fp32"), log=None)
    return model.state_dict()


@pytest.fixture
def two_word_model(tinier_model, two_word_weights):
    def make():
        model = tinier_model()
        model.load_state_dict(two_word_weights)
        return model.eval()
    return make


def test_bad_settings_fail_in_one_line_before_any_work():
    with pytest.raises(ValueError, match=r"^invalid RLOOConfig: k must be >= 2 \(each sample's baseline is the mean "
                                         r"reward of the prompt's other samples\), got 1$"):
        RLOOConfig(k=1)
    with pytest.raises(ValueError, match="beta must be >= 0, got -0.1; prompts_per_step must be >= 1, got 0"):
        RLOOConfig(beta=-0.1, prompts_per_step=0)
    with pytest.raises(ValueError, match="needs k >= 2 samples per prompt, got 1"):
        leave_one_out_advantages(torch.zeros(3, 1))


def test_the_loss_by_hand():
    """One prompt, k = 3: r = (1, 0, 2), log pi = (-1, -2, -3), log pi_ref = (-1.5, -2, -2), beta = 0.5.
    kl = (0.5, 0, -1); R = r - beta kl = (0.75, 0, 2.5); A_i = R_i - mean of the other two = (-0.5, -1.625, 2.125);
    loss = -mean(A * log pi) = -(0.5 + 3.25 - 6.375) / 3 = 0.875; d loss / d log pi = -A / 3."""
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    out = rloo_loss(policy, torch.tensor([[-1.5, -2.0, -2.0]]), torch.tensor([[1.0, 0.0, 2.0]]), beta=0.5)
    assert out.kl.tolist() == [[0.5, 0.0, -1.0]] and out.rewards.tolist() == [[0.75, 0.0, 2.5]]
    assert out.advantages.tolist() == [[-0.5, -1.625, 2.125]]
    assert out.loss.item() == pytest.approx(0.875)
    out.loss.backward()
    assert policy.grad[0].tolist() == pytest.approx([0.5 / 3, 1.625 / 3, -2.125 / 3])
    assert not out.advantages.requires_grad and not out.kl.requires_grad  # constants: the gradient is REINFORCE's
    two = leave_one_out_advantages(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    assert two.tolist() == [[-2.0, 2.0], [0.0, 0.0]]  # k = 2: each against the other; a tie teaches nothing


def test_the_log_probs_with_gradient_are_the_evaluators(tokenizer, tinier_model):
    model = tinier_model().eval()
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=2, max_new_tokens=5, seed=1)
    with_grad = samples_logps(model, samples, tokenizer.pad_token_id)
    assert with_grad.requires_grad
    assert torch.allclose(with_grad.detach(), completion_logps(model, samples, pad_token_id=tokenizer.pad_token_id,
                                                               precision="fp32"), atol=1e-4)
    assert torch.allclose(with_grad.detach(), torch.tensor(samples.logps), atol=1e-4)


def test_a_few_steps_raise_the_reward_deterministically_and_keep_the_mode(tokenizer, two_word_model):
    def mean_reward(model):
        samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=16, max_new_tokens=3, seed=99)
        return sum(goods(None, samples.texts)) / len(samples.texts)

    runs, models = [], []
    for _ in range(2):
        model = two_word_model()
        models.append(model)
        runs.append(train_rloo(model, tokenizer, PROMPTS, goods, RLOOConfig(**SETTINGS)))
        assert not model.training
    first, again = runs
    assert [r["loss"] for r in first] == [r["loss"] for r in again] and len(first) == 6
    before, after = mean_reward(two_word_model()), mean_reward(models[0])
    assert after > before + 0.5, (before, after)
    assert abs(first[0]["kl"]) < 1e-4  # step 1 samples the reference itself
    assert first[-1]["kl"] > 0.1
    assert set(first[0]) >= {"reward", "kl", "shaped_reward", "length", "seconds_sampling", "grad_norm", "lr"}


def test_the_penalty_is_in_the_reward_and_a_reward_model_will_do(tokenizer, two_word_model, tinier_model):
    model = two_word_model()
    history = train_rloo(model, tokenizer, PROMPTS, goods, RLOOConfig(**{**SETTINGS, "beta": 0.5, "steps": 2}))
    assert history[1]["shaped_reward"] == pytest.approx(history[1]["reward"] - 0.5 * history[1]["kl"], abs=1e-5)
    learned = RewardModelFunction(reward_model_from(tinier_model(seed=3), tokenizer), tokenizer)
    history = train_rloo(model, tokenizer, PROMPTS, learned, RLOOConfig(**{**SETTINGS, "steps": 1}))
    assert len(history) == 1 and history[0]["reward"] != 0


def test_a_lora_policys_reference_is_its_base_with_the_adapters_off(tokenizer, two_word_model):
    from dpo_edu.lora import add_lora

    model = add_lora(two_word_model(), r=4)
    history = train_rloo(model, tokenizer, PROMPTS, goods, RLOOConfig(**{**SETTINGS, "steps": 3}))
    assert abs(history[0]["kl"]) < 1e-4 and history[-1]["kl"] > 0.01  # the adapters moved away from the base
    samples = sample_completions(model, tokenizer, PROMPTS, per_prompt=4, max_new_tokens=3, seed=5)
    with model.disable_adapter():  # the base weights did not train
        base = completion_logps(model, samples, pad_token_id=tokenizer.pad_token_id)
    assert torch.allclose(base, completion_logps(two_word_model(), samples, pad_token_id=tokenizer.pad_token_id))


def _fixed_batch(prompts=2, k=3, tokens=4):
    """Per-token policy log-probs (P*k, T) with gradient, a completion mask with padding, reference log-probs and
    rewards: a fixed batch for comparing with TRL."""
    generator = torch.Generator().manual_seed(0)
    token_logps = (-3 * torch.rand(prompts * k, tokens, generator=generator)).requires_grad_()
    mask = torch.ones(prompts * k, tokens)
    mask[0, 3:], mask[4, 2:] = 0, 0
    ref_token_logps = -3 * torch.rand(prompts * k, tokens, generator=generator)
    return token_logps, mask, ref_token_logps, torch.rand(prompts * k, generator=generator)


def test_the_kl_penalised_leave_one_out_advantages_are_trls():
    """TRL 1.x computes RLOO's advantages inline in RLOOTrainer._generate_and_score_completions; that very code,
    from "Include the KL penalty" to the advantages, runs here on a fixed batch (normalize_advantages=False, TRL's
    default), beside `rloo_loss`."""
    import inspect
    import textwrap
    import types

    trl = pytest.importorskip("trl")
    from trl.trainer.rloo_trainer import RLOOTrainer, nanstd

    source = inspect.getsource(RLOOTrainer._generate_and_score_completions)
    start, end = source.find("# Include the KL penalty in the reward"), source.find("advantages = torch.nan_to_num(")
    assert start > 0 and end > start, "TRL's RLOO advantage code moved: compare with it again"
    snippet = textwrap.dedent(source[source.rindex("\n", 0, start) + 1:source.index("\n", end)])
    token_logps, mask, ref_token_logps, rewards = _fixed_batch()
    beta = 0.1
    assert trl.RLOOConfig.__dataclass_fields__["normalize_advantages"].default is False
    scope = dict(torch=torch, nanstd=nanstd, gather=lambda tensor: tensor, num_generations=3,
                 rewards=rewards.clone(), old_per_token_logps=token_logps.detach(),
                 ref_per_token_logps=ref_token_logps, completion_mask=mask,
                 self=types.SimpleNamespace(beta=beta, normalize_advantages=False))
    exec(snippet, scope)
    ours = rloo_loss((token_logps * mask).sum(1).view(2, 3), (ref_token_logps * mask).sum(1).view(2, 3),
                     rewards.view(2, 3), beta)
    assert torch.allclose(ours.rewards.reshape(-1), scope["rewards"], atol=1e-6)
    assert torch.allclose(ours.advantages.reshape(-1), scope["advantages"], atol=1e-6)


def test_the_gradient_is_trls_on_a_fixed_batch():
    """TRL's loss, -mean(min(ratio * A, clip(ratio) * A)) with ratio = pi / pi_old, is 0-valued on-policy (ratio 1)
    but has our gradient: RLOOTrainer._compute_loss itself, fed our per-token log-probs and advantages."""
    import collections
    import types

    pytest.importorskip("trl")
    from trl.trainer.rloo_trainer import RLOOTrainer

    token_logps, mask, ref_token_logps, rewards = _fixed_batch()
    sequence_logps = (token_logps * mask).sum(1)
    ours = rloo_loss(sequence_logps.view(2, 3), (ref_token_logps * mask).sum(1).view(2, 3), rewards.view(2, 3), 0.1)
    ours.loss.backward()
    our_gradient, token_logps.grad = token_logps.grad.clone(), None
    same = lambda tensor, **kwargs: tensor  # noqa: E731 (one process: gathering changes nothing)
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), epsilon_low=0.2, epsilon_high=0.2, aux_loss_enabled=False,
        accelerator=types.SimpleNamespace(gather=same, reduce=same, gather_for_metrics=same),
        _metrics={"train": collections.defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (token_logps, torch.zeros_like(token_logps), None))
    inputs = dict(prompt_ids=torch.zeros(6, 2, dtype=torch.long), prompt_mask=torch.ones(6, 2),
                  completion_ids=torch.zeros(6, 4, dtype=torch.long), completion_mask=mask,
                  old_logps=sequence_logps.detach(), advantages=ours.advantages.reshape(-1))
    theirs = RLOOTrainer._compute_loss(trainer, None, inputs)
    theirs.backward()
    assert theirs.item() == pytest.approx(-ours.advantages.mean().item(), abs=1e-6)  # 0: advantages sum to 0
    assert torch.allclose(token_logps.grad, our_gradient, atol=1e-7) and our_gradient.abs().max() > 0.01
