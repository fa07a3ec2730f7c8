"""The gradient-entanglement diagnostic during training (docs/method.md section 8).

cos(g_w, g_l), |g_w| and |g_l| for g = the gradient of the mean summed log-prob of the chosen
(correct) and of the rejected (incorrect) responses under the current policy, at the weights a step
starts from, on the first `learner.diagnostics_rows` rows per side of the rows it is given (the
training loop gives the same rows every time). Logged every `learner.diagnostics_every` steps, the
same with and without FPA (g is the policy's own gradient either way), so runs can be compared.

`learner.diagnostics_scope` says over which parameters:
- `head`: the LM head's weight as the output projection (with tied embeddings, not the
  input-embedding path through the same matrix). Cost: one no-grad forward of the body, both sides
  in one batch, then the head's gradient in blocks of positions (one [chunk, vocab] block at a
  time), on an fp32 copy of the head, so the training parameters and their gradient hooks are never
  touched. Every rank runs it on the same rows (ZeRO-3 gathers layer by layer through the forward,
  which needs every rank), so every rank computes the same numbers.
- `all`: the head's, and the same over every parameter of the model (the shared steps where a
  correct and an incorrect solution entangle: the body, and a tied embedding by both its paths),
  logged as grad_cosine_all, grad_norm_w_all, grad_norm_l_all. Cost: an fp32 copy of the model and
  a forward and backward of it per DIAGNOSTIC_MICRO_ROWS rows; DDP only (config-checked: under ZeRO
  no rank holds the whole model).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from fpa_ray.learner.data import Example, Kind, collate
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.objectives.diagnostics import cosine_and_norms

CHUNK = 512  # positions per head-gradient block
DIAGNOSTIC_MICRO_ROWS = 8  # rows per forward and backward of the whole-model gradient


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


def model_gradient(model: torch.nn.Module, rows: list[Example], kind: Kind, pad_id: int, device, side: int) -> Tensor:
    """d/dtheta of the mean over `rows` of the summed log-prob of response `side` (paired: 0 chosen,
    1 rejected; labelled: 0), every parameter of `model`, flat, in blocks of DIAGNOSTIC_MICRO_ROWS rows."""
    params = [p for p in model.parameters() if p.requires_grad]
    grad = torch.zeros(sum(p.numel() for p in params), device=device)
    for start in range(0, len(rows), DIAGNOSTIC_MICRO_ROWS):
        block = rows[start : start + DIAGNOSTIC_MICRO_ROWS]
        batch, _ = collate(block, kind, pad_id, device)
        part = slice(side * len(block), (side + 1) * len(block))  # paired rows collate as every chosen, then every rejected
        logits = model(input_ids=batch.input_ids[part], attention_mask=batch.attention_mask[part]).logits.float()
        labels, mask = shifted_targets(batch)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels[part][..., None]).squeeze(-1)
        grads = torch.autograd.grad(logp[mask[part]].sum(), params, allow_unused=True)
        grad += torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
    return grad / len(rows)


def _sides(examples: list[Example], kind: Kind, rows: int) -> tuple[list[Example], list[Example]] | None:
    """Rows whose responses give g_w and g_l: the first pairs, or the first correct and incorrect samples."""
    if kind == "paired":
        first = examples[:rows]
        return (first, first) if first else None
    correct = [e for e in examples if e.label][:rows]
    incorrect = [e for e in examples if not e.label][:rows]
    return (correct, incorrect) if correct and incorrect else None


def entanglement_metrics(backend, examples: list[Example], kind: Kind, pad_id: int, rows: int = 4, scope: str = "head") -> dict[str, float]:
    """cos(g_w, g_l), |g_w|, |g_l| on the LM head (and with scope `all` over every parameter) for the
    first `rows` per side of `examples` (a batch in its order); {} when it holds no correct or no incorrect sample."""
    sides = _sides(examples, kind, rows)
    if sides is None:
        return {}
    head = backend.unwrapped.get_output_embeddings().weight
    with backend.gathered([head]):
        weight = head.detach().float().clone().requires_grad_()
    # One batch for both sides: paired rows collate as every chosen row, then every rejected row.
    batch_rows = sides[0] if kind == "paired" else sides[0] + sides[1]
    batch, _ = collate(batch_rows, kind, pad_id, backend.device)
    with torch.no_grad(), backend.precision.autocast(backend.device):
        hidden = backend.unwrapped.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    labels, mask = shifted_targets(batch)
    split = len(sides[0])
    gradients = [head_gradient(hidden[part][mask[part]].float(), labels[part][mask[part]], weight, rows=len(side)).flatten()
                 for part, side in ((slice(None, split), sides[0]), (slice(split, None), sides[1]))]
    metrics = {key: float(value) for key, value in cosine_and_norms(*gradients).items()}
    if scope == "all":
        model = copy.deepcopy(backend.unwrapped).float()  # the training parameters, their hooks and grads untouched
        whole = [model_gradient(model, sides[0], kind, pad_id, backend.device, side=0),
                 model_gradient(model, sides[1], kind, pad_id, backend.device, side=1 if kind == "paired" else 0)]
        del model
        metrics.update({f"{key}_all": float(value) for key, value in cosine_and_norms(*whole).items()})
    return metrics
