"""Sequence log-probabilities: log pi(y|x) = sum over response tokens of log pi(y_t | x, y_<t).

Two versions that agree:

- :func:`sequence_logprobs_plain` teaches: log_softmax over the vocabulary, then
  gather the label's entry. It builds a (B, T, V) tensor as large as the logits.
- :func:`sequence_logprobs` is what the course uses: gather the label's logit and
  subtract a log-sum-exp computed a chunk of rows at a time, so no (B, T, V)
  temporary exists beyond the logits themselves (and, when training, their
  gradient, which autograd needs anyway).

Conventions (those of Hugging Face and TRL): `labels` has the shape of
`input_ids`, with `ignore_index` (-100) on prompt and padding tokens; the
logits at position t predict the token at t + 1, so both functions shift by one.
"""

from __future__ import annotations

import torch

# Rows of the (B*T, V) logits handled at once: about 1/16 of them, and at most
# 256 (with a 49,152-token vocabulary, 50 MB of float32 temporaries), so the
# temporaries stay a small fraction of the logits for small batches too.
MAX_CHUNK_ROWS = 256


def default_chunk_rows(rows: int) -> int:
    return max(1, min(MAX_CHUNK_ROWS, -(-rows // 16)))


def _check_shapes(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align: logits[:, t] predicts labels[:, t + 1]. Returns (B, T-1, V) logits and (B, T-1) labels."""
    _check_shapes(logits, labels)
    return logits[:, :-1, :], labels[:, 1:]


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp32, bf16, fp16) is computed in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _reduce(token_logps: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Sum (or average) the masked per-token log-probs: (B, T-1) -> (B,)."""
    total = (token_logps * mask).sum(-1)
    if average:
        return total / mask.sum(-1).clamp_min(1)
    return total


def sequence_logprobs_plain(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """The textbook version: log_softmax over V, gather the label's log-prob, mask, sum.

    logits: (B, T, V); labels: (B, T) with `ignore_index` where no token is scored.
    Returns (B,) in float32 (or float64 for float64 logits).
    """
    logits, labels = _shift(logits, labels)
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)  # any valid index; masked out below
    log_probs = torch.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)  # (B, T-1, V): the big temporary
    token_logps = log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return _reduce(token_logps, mask, average)


class _TokenLogprobs(torch.autograd.Function):
    """Per-token log-probs of the labels, chunked over rows, with a hand-written backward.

    forward:  logp_i = z_i[y_i] - logsumexp(z_i)          for each row i of (N, V) logits z
    backward: dL/dz_i = g_i * (onehot(y_i) - softmax(z_i)) computed a chunk at a time, in the gradient itself
    Saving only the logits (already alive) and the (N,) log-sum-exps keeps the
    backward from storing a (N, V) softmax or log-softmax; computing in place keeps
    it from allocating (and, on a CPU, page-faulting) a temporary per chunk.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        rows = logits.shape[0]
        dtype = _compute_dtype(logits)
        log_normaliser = torch.empty(rows, dtype=dtype, device=logits.device)
        for start in range(0, rows, chunk_rows):
            log_normaliser[start : start + chunk_rows] = torch.logsumexp(
                logits[start : start + chunk_rows].to(dtype), dim=-1
            )
        label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(dtype)
        ctx.save_for_backward(logits, labels, log_normaliser)
        ctx.chunk_rows = chunk_rows
        return label_logits - log_normaliser

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, labels, log_normaliser = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        # float32 (or float64) logits: each chunk's softmax is computed in place in the gradient itself, with no
        # temporary per chunk; bf16 / fp16 ones: in float32 in one reused buffer, rounded once into the gradient
        in_place = logits.dtype == log_normaliser.dtype
        buffer = (
            None
            if in_place
            else torch.empty(
                min(ctx.chunk_rows, len(logits)), logits.shape[1], dtype=log_normaliser.dtype, device=logits.device
            )
        )
        for start in range(0, len(logits), ctx.chunk_rows):
            stop = start + ctx.chunk_rows
            chunk, normaliser = logits[start:stop], log_normaliser[start:stop, None]
            if in_place:
                grad = torch.sub(chunk, normaliser, out=grad_logits[start:stop])
            else:  # upcast by copying into the buffer: torch.sub would allocate a float32 copy of the chunk
                grad = buffer[: len(chunk)].copy_(chunk).sub_(normaliser)
            grad.exp_().mul_(-grad_output[start:stop, None])  # -g * softmax
            grad.scatter_add_(-1, labels[start:stop, None], grad_output[start:stop, None].to(grad.dtype))
            if not in_place:
                grad_logits[start:stop] = grad
        return grad_logits, None, None


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    average: bool = False,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Sum (or, with `average`, mean) of log pi(label_t | previous tokens) over scored tokens.

    logits: (B, T, V) from a causal LM on input_ids (B, T); labels: (B, T), a copy
    of input_ids with `ignore_index` on prompt and padding. Returns (B,) float32
    (float64 for float64 logits).
    Memory: beyond the logits, only (chunk_rows, V) temporaries in the forward
    pass (chunk_rows defaults to B*T/16, at most 256), and in the backward pass the logits' gradient (which any version needs).
    bf16 or fp16 logits are upcast to float32 a chunk at a time.
    DPO sums (average=False): the sequence log-prob log pi(y|x) is a sum, and
    the DPO derivation needs exactly that quantity.
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _check_shapes(logits, labels)
    # Shift the labels, not the logits: slicing logits[:, :-1] and flattening it
    # would copy all of them. The last position of each row predicts nothing and
    # is masked out instead.
    next_labels = torch.full_like(labels, ignore_index)
    next_labels[:, :-1] = labels[:, 1:]
    mask = next_labels != ignore_index
    batch, steps, vocab = logits.shape
    flat_logits = logits.reshape(batch * steps, vocab)  # a view of contiguous logits
    flat_labels = next_labels.masked_fill(~mask, 0).reshape(-1)
    chunk_rows = chunk_rows or default_chunk_rows(batch * steps)
    token_logps = _TokenLogprobs.apply(flat_logits, flat_labels, chunk_rows).view(batch, steps)
    return _reduce(token_logps, mask, average)
