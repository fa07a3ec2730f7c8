"""Paired objectives on correct-over-incorrect pairs: DPO, RPO, SimPER (docs/method.md section 5).

Each function returns one loss per pair; FPA, normalisation and metrics come from the registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fpa_ray.objectives.batches import PairedBatch
from fpa_ray.objectives.registry import register_objective


def _logratio_margin(batch: PairedBatch) -> Tensor:
    chosen, rejected = batch.chosen, batch.rejected
    return (chosen.logp - chosen.ref_logp) - (rejected.logp - rejected.ref_logp)


@register_objective("dpo", batch=PairedBatch, needs_reference=True)
def dpo(batch: PairedBatch, *, beta: float = 0.1) -> Tensor:
    """-log sigmoid(beta [(l_w - l_ref,w) - (l_l - l_ref,l)])."""
    return -F.logsigmoid(beta * _logratio_margin(batch))


@register_objective("rpo", batch=PairedBatch, needs_reference=True)
def rpo(batch: PairedBatch, *, beta: float = 0.1, alpha: float = 1.0) -> Tensor:
    """DPO plus alpha times the length-normalised NLL of the chosen response."""
    return dpo(batch, beta=beta) - alpha * batch.chosen.logp / batch.chosen.num_tokens


@register_objective("simper", batch=PairedBatch, needs_reference=False)
def simper(batch: PairedBatch) -> Tensor:
    """Reference-free: -exp(l_w/|y_w|) + exp(l_l/|y_l|) (FPA still needs a reference for pi_hat)."""
    chosen, rejected = batch.chosen, batch.rejected
    return -torch.exp(chosen.logp / chosen.num_tokens) + torch.exp(rejected.logp / rejected.num_tokens)
