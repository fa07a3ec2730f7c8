"""Unpaired objectives on verifier-labelled samples: KTO, probability-weighted offline RL, REINFORCE.

Correct samples are desirable (advantage A = +1), incorrect ones undesirable (A = -1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpa_ray.objectives.batches import LabelledBatch
from fpa_ray.objectives.registry import register_objective


def _advantage(batch: LabelledBatch) -> Tensor:
    return torch.where(batch.correct, 1.0, -1.0).to(batch.samples.logp.dtype)


def kto_reference_point(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """KTO's z0: max(0, mean(l - l_ref)) over mismatched (prompt, response) pairs, detached.

    Compute it once over the global batch and pass the same value to every micro-batch, so
    gradient accumulation does not change the loss.
    """
    return (logp.detach() - ref_logp.detach()).mean().clamp(min=0)


@register_objective("kto", batch=LabelledBatch, needs_reference=True, needs_kl_reference=True)
def kto(
    batch: LabelledBatch, *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> Tensor:
    """lam_D (1 - sigmoid(beta (r - z0))) if correct, lam_U (1 - sigmoid(beta (z0 - r))) if not; r = l - l_ref."""
    if batch.kl_reference is None:
        raise ValueError("objective 'kto' needs kl_reference (z0); compute it with kto_reference_point")
    samples, z0 = batch.samples, batch.kl_reference.detach()
    reward = samples.logp - samples.ref_logp
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (reward - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - reward)))
    return torch.where(batch.correct, desirable, undesirable)


@register_objective("offline_rl", batch=LabelledBatch, needs_reference=False)
def offline_rl(batch: LabelledBatch) -> Tensor:
    """Probability-weighted offline RL, -A exp(l/|y|): its coefficient A exp(l/|y|)/|y| depends on pi, so FPA acts."""
    samples = batch.samples
    return -_advantage(batch) * torch.exp(samples.logp / samples.num_tokens)


@register_objective("reinforce", batch=LabelledBatch, needs_reference=False)
def reinforce(batch: LabelledBatch) -> Tensor:
    """Plain REINFORCE, -A l/|y|: constant coefficients, so FPA is a no-op (the control baseline)."""
    samples = batch.samples
    return -_advantage(batch) * samples.logp / samples.num_tokens
