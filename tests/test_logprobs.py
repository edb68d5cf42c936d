import pytest
import torch

from dpo_edu.logprobs import sequence_logprobs, sequence_logprobs_plain


def random_batch(batch=3, steps=19, vocab=97, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(batch, steps, vocab, generator=generator)).to(dtype)
    labels = torch.randint(vocab, (batch, steps), generator=generator)
    labels[:, :5] = -100  # a prompt
    if batch > 1:
        labels[1, 12:] = -100  # padding on a shorter row
    return logits, labels


def test_manual_definition():
    logits, labels = random_batch(batch=1, steps=9, vocab=5)
    expected = sum(
        torch.log_softmax(logits[0, t], -1)[labels[0, t + 1]] for t in range(8) if labels[0, t + 1] != -100
    )
    assert torch.allclose(sequence_logprobs(logits, labels), expected.reshape(1), atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 7, 256])
@pytest.mark.parametrize("average", [False, True])
def test_lean_equals_plain_fp32(chunk_rows, average):
    logits, labels = random_batch()
    lean = sequence_logprobs(logits, labels, chunk_rows=chunk_rows, average=average)
    plain = sequence_logprobs_plain(logits, labels, average=average)
    assert lean.dtype == torch.float32
    assert torch.allclose(lean, plain, atol=1e-5, rtol=0)


def test_average_is_sum_over_count():
    logits, labels = random_batch()
    counts = (labels[:, 1:] != -100).sum(-1)
    assert torch.allclose(sequence_logprobs(logits, labels, average=True) * counts, sequence_logprobs(logits, labels), atol=1e-4)


def test_gradients_agree_and_gradcheck():
    logits, labels = random_batch()
    weights = torch.randn(3)
    lean_input = logits.clone().requires_grad_(True)
    plain_input = logits.clone().requires_grad_(True)
    (sequence_logprobs(lean_input, labels, chunk_rows=5) * weights).sum().backward()
    (sequence_logprobs_plain(plain_input, labels) * weights).sum().backward()
    assert torch.allclose(lean_input.grad, plain_input.grad, atol=1e-6)
    small = torch.randn(2, 6, 11, dtype=torch.float64, requires_grad=True)
    small_labels = torch.randint(11, (2, 6))
    small_labels[:, :2] = -100
    assert torch.autograd.gradcheck(lambda x: sequence_logprobs(x, small_labels, chunk_rows=3), (small,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stable_in_half_precision(dtype):
    logits, labels = random_batch(vocab=2_000, seed=1)
    half = logits.to(dtype)
    reference = sequence_logprobs_plain(half.float(), labels)  # same rounded inputs, fp32 maths
    lean = sequence_logprobs(half, labels)
    assert torch.isfinite(lean).all()
    assert torch.allclose(lean, reference, atol=1e-3, rtol=1e-5)
    # a naive log_softmax in the half type itself drifts much further
    naive = torch.log_softmax(half[:, :-1], -1).gather(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    naive = (naive.float() * (labels[:, 1:] != -100)).sum(-1)
    assert (lean - reference).abs().max() < (naive - reference).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradient_is_the_float32_one_rounded_once(dtype):
    """16-bit logits: the backward works in float32 (a chunk at a time, the last one short) and rounds once."""
    logits, labels = random_batch(vocab=2_000, seed=2)
    half = logits.to(dtype).requires_grad_(True)
    full = half.detach().float().requires_grad_(True)
    weights = torch.randn(3)
    (sequence_logprobs(half, labels, chunk_rows=7) * weights).sum().backward()  # 57 rows: the last chunk has 1
    (sequence_logprobs(full, labels, chunk_rows=7) * weights).sum().backward()
    assert half.grad.dtype == dtype and torch.equal(half.grad, full.grad.to(dtype))


def test_fully_masked_row_is_zero():
    logits, labels = random_batch()
    labels[2] = -100
    assert sequence_logprobs(logits, labels)[2].item() == 0.0
    assert sequence_logprobs(logits, labels, average=True)[2].item() == 0.0


def test_shapes_are_checked():
    logits, labels = random_batch()
    with pytest.raises(ValueError, match=r"expected logits \(B, T, V\) and labels \(B, T\)"):
        sequence_logprobs(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="chunk_rows"):
        sequence_logprobs(logits, labels, chunk_rows=0)


def test_no_copy_of_the_logits_without_gradients():
    """The lean forward must not materialise a second (B, T, V) tensor."""
    logits, labels = random_batch(batch=4, steps=64, vocab=4_096)
    allocations = []

    def counting_logsumexp(x, *args, **kwargs):
        allocations.append(x.numel())
        return torch_logsumexp(x, *args, **kwargs)

    torch_logsumexp = torch.logsumexp
    torch.logsumexp = counting_logsumexp
    try:
        with torch.no_grad():
            sequence_logprobs(logits, labels, chunk_rows=32)
    finally:
        torch.logsumexp = torch_logsumexp
    assert max(allocations) <= 32 * 4_096 < logits.numel()


@pytest.fixture(scope="module")
def real_model():
    from dpo_edu.models import load_model

    model, tokenizer = load_model(device="cpu")
    model.eval()
    return model, tokenizer


def test_equals_the_models_cross_entropy(real_model):
    """On SmolLM2-135M-Instruct: sequence_logprobs == -(sum of the model's own per-token cross-entropy)."""
    from dpo_edu.data import collate_preferences, tokenize_preference

    model, tokenizer = real_model
    examples = [
        {"prompt": "Describe the film in one line.", "chosen": "A warm, funny story about two brothers.", "rejected": "Boring."},
        {"prompt": "Was the ending good?", "chosen": "Yes, it tied every thread together.", "rejected": "No, it just stopped, with nothing resolved at all."},
    ]
    batch = collate_preferences([tokenize_preference(tokenizer, example) for example in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ours = sequence_logprobs(logits, batch["labels"])
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            output = model(input_ids=batch["input_ids"][row : row + 1, :length], labels=batch["labels"][row : row + 1, :length])
            n_tokens = int((batch["labels"][row, 1:length] != -100).sum())
            assert ours[row].item() == pytest.approx(-output.loss.item() * n_tokens, rel=1e-4)


@pytest.mark.parametrize("dtype, extra", [(torch.float32, 0), (torch.bfloat16, 2 * 32 / 256)])
def test_the_backward_allocates_the_gradient_and_no_temporary_per_chunk(dtype, extra):
    """What the backward allocates, in units of the logits' size: the gradient (1), and for 16-bit logits one
    float32 buffer of chunk_rows rows (here 32 of 256 rows, twice the bytes). Temporaries per chunk would add several
    units: each one is a fresh allocation, which on a CPU is page faults and a pass over memory."""
    logits = torch.randn(4, 64, 4_096).to(dtype).requires_grad_(True)
    labels = torch.randint(4_096, (4, 64))
    total = (sequence_logprobs(logits, labels, chunk_rows=32) * torch.randn(4)).sum()
    with torch.profiler.profile(profile_memory=True) as profile:
        total.backward()
    allocated = sum(event.self_cpu_memory_usage for event in profile.events() if event.self_cpu_memory_usage > 0)
    assert allocated / (logits.numel() * logits.element_size()) == pytest.approx(1 + extra, abs=0.01)
