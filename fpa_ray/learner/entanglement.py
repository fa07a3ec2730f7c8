"""The gradient-entanglement diagnostic during training (METHOD.md section 8).

cos(g_w, g_l), |g_w| and |g_l| for g = the gradient of the mean summed log-prob of the chosen
(correct) and of the rejected (incorrect) responses under the current policy, on the LM head's
weight as the output projection (with tied embeddings, not the input-embedding path through the
same matrix), at the weights a step starts from. Logged every `learner.diagnostics_every` steps, the same
with and without FPA (g is the policy's own gradient either way), so runs can be compared.

Cost: one no-grad forward of the body on the first DIAGNOSTIC_ROWS rows per side of the batch it
is given (the training loop gives the first step's batch every time), then the head's gradient in chunks of positions (one [chunk, vocab] block at a
time, not [rows, length, vocab]), on an fp32 copy of the head so the training parameters and their
gradient hooks are never touched. Every rank runs it on the same rows (ZeRO-3 gathers layer by
layer through the forward, which needs every rank), so every rank computes the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpa_ray.learner.data import Example, Kind, collate
from fpa_ray.learner.forward import shifted_targets

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


def _side_gradient(backend, examples: list[Example], kind: Kind, side: int, pad_id: int, weight: Tensor) -> Tensor:
    batch, _ = collate(examples, kind, pad_id, backend.device)
    if kind == "paired":  # collate puts every chosen row first, then every rejected row
        half = batch.input_ids.shape[0] // 2
        select = slice(side * half, (side + 1) * half)
        batch = type(batch)(batch.input_ids[select], batch.attention_mask[select], batch.response_mask[select], None)
    model = backend.unwrapped
    with torch.no_grad(), backend.precision.autocast(backend.device):
        hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    labels, mask = shifted_targets(batch)
    return head_gradient(hidden[mask].float(), labels[mask], weight, rows=len(examples))


def entanglement_metrics(backend, examples: list[Example], kind: Kind, pad_id: int) -> dict[str, float]:
    """cos(g_w, g_l), |g_w|, |g_l| on the LM head for `examples` (the step's global batch, in its order);
    {} when it holds no correct or no incorrect sample."""
    sides = _sides(examples, kind)
    if sides is None:
        return {}
    head = backend.unwrapped.get_output_embeddings().weight
    with backend.gathered([head]):
        weight = head.detach().float().clone().requires_grad_()
    g_w = _side_gradient(backend, sides[0], kind, 0, pad_id, weight).flatten()
    g_l = _side_gradient(backend, sides[1], kind, 1 if kind == "paired" else 0, pad_id, weight).flatten()
    norm_w, norm_l = g_w.norm(), g_l.norm()
    cosine = torch.dot(g_w, g_l) / (norm_w * norm_l).clamp_min(torch.finfo(torch.float32).tiny)
    return {"grad_cosine": float(cosine), "grad_norm_w": float(norm_w), "grad_norm_l": float(norm_l)}
