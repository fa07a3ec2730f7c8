"""Gradient-entanglement diagnostic (docs/method.md section 8): how aligned are grad l_w and grad l_l?"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _flat_grad(output: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])


def gradient_entanglement(chosen_logp: Tensor, rejected_logp: Tensor, params: Sequence[Tensor]) -> dict[str, Tensor]:
    """cos(g_w, g_l), |g_w|, |g_l| with g = grad of the batch-mean summed log-prob, on `params` only.

    The graph is kept, so the training loss can still be backpropagated afterwards.
    """
    if not params:
        raise ValueError("params is empty: pass the parameter subset to measure (e.g. the LM head)")
    if not (chosen_logp.requires_grad and rejected_logp.requires_grad):
        raise ValueError("chosen_logp and rejected_logp must carry a gradient graph")
    return cosine_and_norms(_flat_grad(chosen_logp.mean(), params), _flat_grad(rejected_logp.mean(), params))


def cosine_and_norms(g_w: Tensor, g_l: Tensor) -> dict[str, Tensor]:
    """cos(g_w, g_l), |g_w|, |g_l| of two flat gradients (a zero gradient has cosine 0)."""
    norm_w, norm_l = g_w.norm(), g_l.norm()
    cosine = torch.dot(g_w, g_l) / (norm_w * norm_l).clamp_min(torch.finfo(torch.float32).tiny)
    return {"grad_cosine": cosine.detach(), "grad_norm_w": norm_w.detach(), "grad_norm_l": norm_l.detach()}
