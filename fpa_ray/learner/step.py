"""One objective evaluation on a tokenised micro-batch: the unit that Ray Train workers repeat."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fpa_ray.config import FPAConfig
from fpa_ray.learner.forward import TokenizedBatch, forward_stats, mismatched_batch, objective_batch, shifted_targets
from fpa_ray.objectives import LabelledBatch, Objective, ObjectiveOutput, kto_reference_point, masked_sum, token_logprobs


@torch.no_grad()
def kl_reference(model: nn.Module, ref_model: nn.Module, batch: TokenizedBatch, chunk_size: int | None) -> torch.Tensor:
    """KTO's z0 on this micro-batch's mismatched (prompt, response) pairs."""
    kl_rows = mismatched_batch(batch)
    labels, mask = shifted_targets(kl_rows)
    logp = []
    for net in (model, ref_model):
        logits = net(input_ids=kl_rows.input_ids, attention_mask=kl_rows.attention_mask).logits
        logp.append(masked_sum(token_logprobs(logits, labels, mask, chunk_size), mask))
    return kto_reference_point(*logp)


def objective_loss(
    objective: Objective,
    params: dict[str, Any],
    model: nn.Module,
    ref_model: nn.Module | None,
    batch: TokenizedBatch,
    fpa: FPAConfig,
    normalizer: float | None = None,
    ref_logp: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """Forward the policy (and reference), then apply `objective`, with FPA when `fpa.enabled`."""
    stats = forward_stats(objective, model, ref_model, batch, fpa, ref_logp)
    inputs = objective_batch(objective, stats, batch.correct)
    if objective.needs_kl_reference:
        inputs = LabelledBatch(inputs.samples, inputs.correct, kl_reference(model, ref_model, batch, fpa.chunk_size))
    apply_to = fpa.apply_to if fpa.enabled else "both"
    return objective(inputs, apply_to=apply_to, normalizer=normalizer, **params)
