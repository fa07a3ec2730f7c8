"""Token log-probabilities of the policy and of the future policy pi_hat (docs/method.md section 3).

pi_hat(. | x, y_<t) = softmax((1 + lam) * h_theta - lam * h_ref), with h the full-vocabulary logits.
Both work in chunks of `chunk_size` contiguous positions (skipping chunks with no response token),
so the extra memory of the no-grad paths is bounded by chunk_size x vocab floats even for a 152k
vocabulary; chunk_size=None picks about AUTO_CHUNK_LOGITS logits per chunk.
Callers align `labels` with `logits` (labels[:, t] is the token predicted by logits[:, t]).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

FutureMode = Literal["exact", "sequence"]


def _check_token_inputs(logits: Tensor, labels: Tensor, mask: Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, tokens, vocab], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but logits has {tuple(logits.shape[:2])} positions")
    if mask.shape != labels.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but labels has {tuple(labels.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    empty = ~mask.any(dim=1)
    if empty.any():
        raise ValueError(f"mask row {empty.nonzero()[0].item()} selects no tokens (empty response)")
    selected = labels[mask]
    if selected.numel() and (selected.min() < 0 or selected.max() >= logits.shape[-1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[-1]}) on masked positions")


def check_lam(lam: float) -> None:
    """Reject a negative, infinite or non-numeric extrapolation strength."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < float("inf"):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")


# Logits per chunk when no chunk_size is given. On the 2-core CPU, 16 positions x 151,936 logits
# ran the log-sum-exp passes twice as fast as 768 positions at once (the chunk stays in cache).
AUTO_CHUNK_LOGITS = 2**21


def _row_ranges(mask: Tensor, vocab_size: int, chunk_size: int | None) -> Iterator[tuple[int, int]]:
    """Contiguous ranges of flattened positions that hold at least one masked position."""
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    flat = mask.reshape(-1)
    step = chunk_size or max(1, AUTO_CHUNK_LOGITS // vocab_size)
    for start in range(0, flat.numel(), step):
        if flat[start : start + step].any():
            yield start, min(start + step, flat.numel())


def _accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half-precision logits, else the widest input dtype."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _selected_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[labels] without materialising the whole log-softmax."""
    return logits.gather(1, labels.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)


def _flatten(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    # A view when `logits` is contiguous: shift labels rather than slicing logits[:, :-1], which copies.
    # Positions outside the mask may hold any label (padding, -100): point them at token 0.
    return logits.reshape(-1, logits.shape[-1]), torch.where(mask, labels, 0).reshape(-1)


def token_logprobs(logits: Tensor, labels: Tensor, mask: Tensor, chunk_size: int | None = None) -> Tensor:
    """Per-token log pi(labels), at least float32; 0 where mask is False.

    With a gradient the whole tensor is done at once: autograd keeps the logits anyway, and
    slicing them per chunk would allocate a full-size gradient per chunk in the backward pass.
    """
    _check_token_inputs(logits, labels, mask)
    flat, flat_labels = _flatten(logits, labels, mask)
    dtype = _accumulation_dtype(logits)
    if logits.requires_grad and torch.is_grad_enabled():
        return (_selected_logprob(flat.to(dtype), flat_labels) * mask.reshape(-1)).view(labels.shape)
    out = torch.zeros(flat_labels.shape, dtype=dtype, device=logits.device)
    with torch.no_grad():
        for start, end in _row_ranges(mask, logits.shape[-1], chunk_size):
            out[start:end] = _selected_logprob(flat[start:end].to(dtype), flat_labels[start:end])
    return (out * mask.reshape(-1)).view(labels.shape)


def _future_inputs(policy_logits: Tensor, ref_logits: Tensor, labels: Tensor, lam: float, mask: Tensor):
    """Checked inputs of the future log-probs: flattened policy and reference logits, labels, accumulation dtype."""
    check_lam(lam)
    if ref_logits.shape != policy_logits.shape:
        raise ValueError(f"ref_logits has shape {tuple(ref_logits.shape)} but policy_logits has {tuple(policy_logits.shape)}")
    _check_token_inputs(policy_logits, labels, mask)
    policy, flat_labels = _flatten(policy_logits, labels, mask)
    return policy, ref_logits.reshape(policy.shape), flat_labels, _accumulation_dtype(policy_logits, ref_logits)


@torch.no_grad()
def future_logprobs(
    policy_logits: Tensor,
    ref_logits: Tensor,
    labels: Tensor,
    lam: float,
    mask: Tensor,
    chunk_size: int | None = None,
    mode: FutureMode = "exact",
) -> Tensor:
    """Per-token log pi_hat(labels), at least float32, under no_grad; 0 where mask is False.

    `exact` normalises the extrapolated logits over the vocabulary; `sequence` is the
    unnormalised (1 + lam) log pi - lam log pi_ref, which drops -log Z_t and so overestimates.
    Cost per chunk: one fused pass lerp(h_ref, h, 1 + lam) = (1 + lam) h - lam h_ref, one log-sum-exp.
    """
    if mode not in ("exact", "sequence"):
        raise ValueError(f"mode must be 'exact' or 'sequence', got {mode!r}")
    policy, ref, flat_labels, dtype = _future_inputs(policy_logits, ref_logits, labels, lam, mask)
    out = torch.zeros(flat_labels.shape, dtype=dtype, device=policy_logits.device)
    for start, end in _row_ranges(mask, policy_logits.shape[-1], chunk_size):
        h, h_ref, y = policy[start:end].to(dtype), ref[start:end].to(dtype), flat_labels[start:end]
        if mode == "exact":
            out[start:end] = _selected_logprob(torch.lerp(h_ref, h, 1 + lam), y)
        else:
            out[start:end] = (1 + lam) * _selected_logprob(h, y) - lam * _selected_logprob(h_ref, y)
    out *= mask.reshape(-1)
    if not torch.isfinite(out).all():
        raise ValueError("future log-probs are not finite: the policy or reference logits hold NaN or inf")
    return out.view(labels.shape)


@torch.no_grad()
def reference_and_future_logprobs(
    policy_logits: Tensor, ref_logits: Tensor, labels: Tensor, lam: float, mask: Tensor, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-token log pi_ref(labels) and exact log pi_hat(labels) (as `token_logprobs(ref_logits, ...)` and
    `future_logprobs(...)`) in one chunked pass: each chunk of the reference's logits is read for both
    log-sum-exps while it is in cache, and the extrapolated logits of every chunk go into one buffer."""
    policy, ref, flat_labels, dtype = _future_inputs(policy_logits, ref_logits, labels, lam, mask)
    ref_out = torch.zeros(flat_labels.shape, dtype=dtype, device=policy_logits.device)
    future_out = torch.zeros_like(ref_out)
    buffer = None
    for start, end in _row_ranges(mask, policy_logits.shape[-1], chunk_size):
        h_ref, y = ref[start:end].to(dtype), flat_labels[start:end]
        if buffer is None:
            buffer = torch.empty_like(h_ref)
        extrapolated = torch.lerp(h_ref, policy[start:end].to(dtype), 1 + lam, out=buffer[: end - start])
        ref_out[start:end] = _selected_logprob(h_ref, y)
        future_out[start:end] = _selected_logprob(extrapolated, y)
    ref_out *= mask.reshape(-1)
    future_out *= mask.reshape(-1)
    if not torch.isfinite(future_out).all():
        raise ValueError("future log-probs are not finite: the policy or reference logits hold NaN or inf")
    return ref_out.view(labels.shape), future_out.view(labels.shape)


def future_sequence_logprobs(logp: Tensor, ref_logp: Tensor, lam: float) -> Tensor:
    """`sequence`-mode log pi_hat from sampled-token log-probs alone: (1 + lam) l - lam l_ref, detached."""
    check_lam(lam)
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)} but logp has {tuple(logp.shape)}")
    return (1 + lam) * logp.detach() - lam * ref_logp.detach()


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the token axis of a [B, T] tensor, counting only masked positions."""
    return (values * mask).sum(dim=-1)
