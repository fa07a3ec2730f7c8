"""The gradient-entanglement diagnostic during training (docs/method.md section 8).

cos(g_w, g_l), |g_w| and |g_l| for g = the gradient of the mean summed log-prob of the chosen
(correct) and of the rejected (incorrect) responses under the current policy, on the LM head's
weight as the output projection (with tied embeddings, not the input-embedding path through the
same matrix), at the weights a step starts from. Logged every `learner.diagnostics_every` steps, the same
with and without FPA (g is the policy's own gradient either way), so runs can be compared.

Cost: one no-grad forward of the body on the first DIAGNOSTIC_ROWS rows per side of the batch it
is given (the training loop gives the first step's batch every time), both sides in one batch;
then the head's gradient in blocks of positions (one [chunk, vocab] block at a time, never
[rows, length, vocab]), on an fp32 copy of the head, so the training parameters and their gradient
hooks are never touched. Every rank runs it on the same rows (ZeRO-3 gathers layer by layer
through the forward, which needs every rank), so every rank computes the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpa_ray.learner.data import Example, Kind, collate
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.objectives.diagnostics import cosine_and_norms

DIAGNOSTIC_ROWS = 4  # per side
CHUNK = 512  # positions per head-gradient block


def head_gradient(hidden: Tensor, targets: Tensor, weight: Tensor, rows: int, chunk: int = CHUNK) -> Tensor:
    """d/dW of (sum over positions of log softmax(h W^T)[target]) / rows, one block of positions at a time.

    `hidden` [N, H] and `targets` [N] are the response positions of `rows` sequences; `weight` is a
    leaf [V, H] that requires grad."""
    grad = torch.zeros_like(weight)
    for start in range(0, hidden.shape[0], chunk):
        h, y = hidden[start : start + chunk], targets[start : start + chunk]
        logp = torch.log_softmax(h @ weight.T, dim=-1).gather(-1, y[:, None]).sum()
        grad += torch.autograd.grad(logp, weight)[0]
    return grad / rows


def _sides(examples: list[Example], kind: Kind) -> tuple[list[Example], list[Example]] | None:
    """Rows whose responses give g_w and g_l: the first pairs, or the first correct and incorrect samples."""
    if kind == "paired":
        rows = examples[:DIAGNOSTIC_ROWS]
        return (rows, rows) if rows else None
    correct = [e for e in examples if e.label][:DIAGNOSTIC_ROWS]
    incorrect = [e for e in examples if not e.label][:DIAGNOSTIC_ROWS]
    return (correct, incorrect) if correct and incorrect else None


def entanglement_metrics(backend, examples: list[Example], kind: Kind, pad_id: int) -> dict[str, float]:
    """cos(g_w, g_l), |g_w|, |g_l| on the LM head for `examples` (a batch in its order); {} when it
    holds no correct or no incorrect sample."""
    sides = _sides(examples, kind)
    if sides is None:
        return {}
    head = backend.unwrapped.get_output_embeddings().weight
    with backend.gathered([head]):
        weight = head.detach().float().clone().requires_grad_()
    # One batch for both sides: paired rows collate as every chosen row, then every rejected row.
    rows = sides[0] if kind == "paired" else sides[0] + sides[1]
    batch, _ = collate(rows, kind, pad_id, backend.device)
    with torch.no_grad(), backend.precision.autocast(backend.device):
        hidden = backend.unwrapped.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    labels, mask = shifted_targets(batch)
    split = len(sides[0])
    gradients = [head_gradient(hidden[part][mask[part]].float(), labels[part][mask[part]], weight, rows=len(side)).flatten()
                 for part, side in ((slice(None, split), sides[0]), (slice(split, None), sides[1]))]
    return {key: float(value) for key, value in cosine_and_norms(*gradients).items()}
