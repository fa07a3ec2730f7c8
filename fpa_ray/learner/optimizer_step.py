"""One optimizer step of the offline learner, and the objective evaluation on one micro-batch that it repeats.

`train_step` is what every Ray Train worker runs per step (and what the distributed invariance tests
run on a plain gloo group): KTO's z0 over the whole global batch first, then forward and backward per
micro-batch through the backend, one optimizer step, the metrics reduced over all workers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fpa_ray.config import FPAConfig
from fpa_ray.learner.data import Example, Kind, MicroBatching, collate, mismatched_examples, split_to
from fpa_ray.learner.forward import TokenizedBatch, forward_stats, objective_batch, shifted_targets
from fpa_ray.objectives import LabelledBatch, Objective, ObjectiveOutput, kto_reference_point, token_logprobs


def _max_over_workers(value: int, device: torch.device) -> int:
    """The largest `value` of all workers, all-reduced on `device` (NCCL takes CUDA tensors only)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def _all_gather(values: torch.Tensor) -> torch.Tensor:
    """Every worker's equal-length 1-D tensor, concatenated in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def plan_micro_batches(batching: MicroBatching, ids: list[int], tokens: dict[int, int], device: torch.device) -> list[list[int]]:
    """This worker's `ids` cut into forward passes (`tokens[i]`: row i's token count). With a token
    budget the count depends on the rows, and every worker runs the largest (agreed over the learner's
    group on `device`): ZeRO-2/3 hold collectives in each backward (and ZeRO-3 in each forward) pass."""
    micro_batches = batching.plan(ids, [tokens[i] for i in ids])
    if batching.tokens is not None:
        micro_batches = split_to(micro_batches, tokens, _max_over_workers(len(micro_batches), device))
    return micro_batches


@torch.no_grad()
def global_kl_reference(backend, ref_model: nn.Module, rows: list[Example], micro_batch_size: int, pad_id: int, max_length: int,
                 chunk_size: int | None, packed: bool = False) -> torch.Tensor:
    """KTO's z0 over a whole global batch of `rows` (each worker forwards its slice of the KL rows, all gather),
    in `micro_batch_size` rows per pass on every worker alike (ZeRO-3 gathers parameters in each forward)."""
    kl_rows = mismatched_examples(rows, max_length)
    local = len(kl_rows) // backend.world
    mine = kl_rows[backend.rank * local : (backend.rank + 1) * local]
    device = backend.device
    logp, ref_logp = [], []
    for start in range(0, len(mine), micro_batch_size):
        batch, _ = collate(mine[start : start + micro_batch_size], "labelled", pad_id, device, packed=packed)
        labels, mask = shifted_targets(batch)
        with backend.precision.autocast(device):
            for net, out in ((backend.model, logp), (ref_model, ref_logp)):
                logits = net(**batch.model_inputs()).logits
                out.append(batch.sequence_sums(token_logprobs(logits, labels, mask, chunk_size), mask))
    return kto_reference_point(_all_gather(torch.cat(logp)), _all_gather(torch.cat(ref_logp)))


def objective_loss(
    objective: Objective,
    params: dict[str, Any],
    model: nn.Module,
    ref_model: nn.Module | None,
    batch: TokenizedBatch,
    fpa: FPAConfig,
    normalizer: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_reference: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """Forward the policy (and reference), then apply `objective`, with FPA when `fpa.enabled`.

    `kl_reference`: KTO's z0, estimated once per optimizer step over the global batch (`global_kl_reference`).
    """
    stats = forward_stats(objective, model, ref_model, batch, fpa, ref_logp)
    inputs = objective_batch(objective, stats, batch.correct)
    if objective.needs_kl_reference:
        if kl_reference is None:
            raise ValueError(f"objective {objective.name!r} needs kl_reference (z0) estimated over the global batch")
        inputs = LabelledBatch(inputs.samples, inputs.correct, kl_reference.to(stats.logp.device))
    apply_to = fpa.apply_to if fpa.enabled else "both"
    return objective(inputs, apply_to=apply_to, normalizer=normalizer, **params)


def train_step(
    backend,
    objective: Objective,
    params: dict[str, Any],
    reference: nn.Module | None,
    examples: list[Example],
    global_ids: list[int],
    kind: Kind,
    pad_id: int,
    fpa: FPAConfig,
    batching: MicroBatching,
    max_length: int,
    precomputed: bool,
) -> dict[str, float]:
    """One optimizer step on global batch `global_ids`: this worker trains its contiguous slice."""
    G, rank, world = len(global_ids), backend.rank, backend.world
    local = G // world
    mine = global_ids[rank * local : (rank + 1) * local]
    z0 = None
    if objective.needs_kl_reference:
        z0 = global_kl_reference(backend, reference, [examples[i] for i in global_ids], batching.size, pad_id, max_length, fpa.chunk_size,
                                 batching.packed)
    micro_batches = plan_micro_batches(batching, mine, {i: examples[i].num_tokens for i in mine}, backend.device)
    step_metrics = StepMetrics()
    for j, ids in enumerate(micro_batches):
        batch, ref_logp = collate([examples[i] for i in ids], kind, pad_id, backend.device, packed=batching.packed)
        with backend.micro_batch(last=j == len(micro_batches) - 1):
            out = objective_loss(objective, params, backend.model, reference, batch, fpa, normalizer=G,
                                 ref_logp=ref_logp if precomputed else None, kl_reference=z0)
            backend.backward(out.loss)
        step_metrics.add(out.metrics, float(out.metrics["num_units"]), float(batch.attention_mask.sum()))
    grad_norm = backend.step()
    metrics = step_metrics.reduce()
    metrics["grad_norm"] = grad_norm
    if z0 is not None:
        metrics["kl_reference"] = float(z0)
    return metrics


COUNTS = ("num_units", "num_chosen", "num_rejected")  # summed, not averaged


def _side(key: str) -> str | None:
    """The side a per-side metric is a mean over (C_w, logp_chosen, ...: chosen; C_l, ...: rejected)."""
    if key.startswith("C_w") or key.endswith("_chosen"):
        return "chosen"
    if key.startswith("C_l") or key.endswith("_rejected"):
        return "rejected"
    return None


class StepMetrics:
    """Means of one optimizer step's metrics over every micro-batch of every worker, as over one batch.

    Each key is weighted by the rows it is a mean over: a per-side metric (C_w, logp_chosen, ...) by the
    micro-batch's rows of that side (a labelled micro-batch holds any share of correct samples, and
    one with no incorrect sample has no C_l), any other by its units. The workers exchange their sums
    as objects: an all-reduce of one tensor per worker would pair different keys (and, with different
    lengths, kill the process group) whenever their key sets differ.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.units = 0.0
        self.tokens = 0.0

    def add(self, metrics: dict, units: float, tokens: float) -> None:
        for key, value in metrics.items():
            if key in COUNTS:
                if key != "num_units":  # that one is `units`
                    self.sums[key] = self.sums.get(key, 0.0) + float(value)
                    self.weights[key] = 1.0
                continue
            side = _side(key)
            weight = float(metrics[f"num_{side}"]) if side and f"num_{side}" in metrics else units
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight
        self.units += units
        self.tokens += tokens

    def reduce(self) -> dict[str, float]:
        """The means over all workers, with `num_units` and `tokens` summed (every worker must call it)."""
        import torch.distributed as dist

        parts = [(self.sums, self.weights, self.units, self.tokens)]
        if dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self.sums, self.weights, self.units, self.tokens))
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for part_sums, part_weights, _, _ in parts:
            for key, value in part_sums.items():
                sums[key] = sums.get(key, 0.0) + value
                weights[key] = weights.get(key, 0.0) + part_weights[key]
        result = {key: sums[key] / weights[key] for key in sorted(sums) if weights[key] > 0 and key not in COUNTS}
        result.update({key: sums[key] for key in COUNTS if key in sums})
        result["num_units"] = sum(part[2] for part in parts)
        result["tokens"] = sum(part[3] for part in parts)
        return result
