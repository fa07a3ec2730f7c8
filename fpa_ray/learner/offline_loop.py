"""The Ray Train worker loop: offline data in, objective (+FPA) steps, checkpoints and metrics out.

Data order: every worker receives the whole dataset (`get_dataset_shard` of an unsplit dataset),
puts its rows in a canonical order and draws, per epoch, one seeded permutation. Global batch s is
rows perm[s*G:(s+1)*G]; worker r takes its contiguous slice of G / world rows and splits it into
micro-batches. So the gradient of a step depends on the data and the seed only: 1 or 2 workers,
1 or 2 accumulation steps, and a run resumed from its checkpoint take the same steps.
Normalisation: each micro-batch loss is divided by G (the global unit count); the backend
(learner/backends.py) scales it back by what its gradient reduction divides by (the contract of
fpa_ray.objectives). KTO's z0 is estimated once per step over the global batch (learner/optimizer_step.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpa_ray import metrics as app_metrics
from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig
from fpa_ray.learner.backends import build_backend, worker_device
from fpa_ray.learner.data import Kind, MicroBatching, global_order, prepare_examples
from fpa_ray.learner.entanglement import entanglement_metrics
from fpa_ray.learner.optimizer_step import train_step
from fpa_ray.learner.worker_records import SNAPSHOTS_DIR, MetricsWriter, report, restored_checkpoint, save_hf
from fpa_ray.objectives import PairedBatch, get_objective
from fpa_ray.tracking import TrackingRun

@dataclass(frozen=True)
class LearnerSetup:
    """Everything a worker needs, picklable."""

    learner: LearnerConfig
    objective: ObjectiveConfig
    fpa: FPAConfig
    seed: int
    policy_path: str
    reference_path: str
    output_dir: str
    run: str = "train"  # the run's name: the tag of its metrics on the dashboard
    tracking: TrackingRun | None = None  # the run's trackers (None: TensorBoard in output_dir alone)
    prefix: str = ""  # the stage's metrics are logged to the trackers as <prefix><name> (round_1/loss)


def example_kind(objective_name: str) -> Kind:
    return "paired" if get_objective(objective_name).batch_type is PairedBatch else "labelled"


def needs_reference_model(objective_name: str, fpa: FPAConfig, precomputed: bool) -> bool:
    """A frozen reference in each worker: unless precomputed columns cover everything the step needs."""
    objective = get_objective(objective_name)
    exact_fpa = fpa.enabled and fpa.mode == "exact"
    return (objective.needs_reference or fpa.enabled) and (not precomputed or exact_fpa or objective.needs_kl_reference)


def train_loop(config: dict) -> None:
    """Entry point of each Ray Train worker."""
    import ray.train

    setup: LearnerSetup = config["setup"]
    learner, fpa = setup.learner, setup.fpa
    rank = ray.train.get_context().get_world_rank()
    device = worker_device(learner)
    torch.manual_seed(setup.seed)
    objective = get_objective(setup.objective.name)
    kind = example_kind(setup.objective.name)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(setup.policy_path)
    prepared = prepare_examples(ray.train.get_dataset_shard("train").iter_rows(), kind, learner.max_length, tokenizer)
    examples, G = prepared.examples, learner.global_batch_size
    if len(examples) < G:
        raise ValueError(f"{len(examples)} usable rows ({dict(prepared.counts)}) are fewer than learner.global_batch_size={G}")
    total_steps = (len(examples) // G) * learner.epochs
    if learner.max_steps is not None:
        total_steps = min(total_steps, learner.max_steps)

    precomputed = all(e.ref_logp is not None for e in examples) and learner.reference != "online"
    if learner.reference == "precomputed" and not precomputed:
        raise ValueError("learner.reference=precomputed but the dataset lacks reference log-prob columns (or rows were truncated)")

    with restored_checkpoint() as restore_dir:
        backend = build_backend(learner, setup.policy_path, restore_dir, total_steps, device)
    reference = None
    if needs_reference_model(setup.objective.name, fpa, precomputed):
        reference = backend.frozen_reference(setup.reference_path)

    output_dir = Path(setup.output_dir)
    writer = MetricsWriter(output_dir, backend.start_step, setup.tracking, setup.prefix) if rank == 0 else None
    # The diagnostic's rows: the first of the first epoch's order, the same at every measurement, so its
    # curve follows the policy rather than which rows each batch happens to hold.
    probe = [examples[i] for i in global_order(len(examples), 0, min(max(G, learner.diagnostics_rows), len(examples)), setup.seed)]
    mark = time.perf_counter()  # throughput counts everything between steps, reporting and checkpoints included
    for step in range(backend.start_step, total_steps):
        lr = backend.scheduler.get_last_lr()[0]
        order = global_order(len(examples), step, G, setup.seed)
        diagnostics = {}
        if learner.diagnostics_every and step % learner.diagnostics_every == 0:  # at the weights the step starts from
            diagnostics = entanglement_metrics(backend, probe, kind, tokenizer.pad_token_id, learner.diagnostics_rows, learner.diagnostics_scope)
        metrics = train_step(backend, objective, setup.objective.params, reference, examples, order, kind, tokenizer.pad_token_id, fpa,
                             MicroBatching.of(learner), learner.max_length, precomputed)
        now = time.perf_counter()
        step_tokens = metrics.pop("tokens")
        metrics.update(diagnostics, step=step + 1, lr=lr, time=time.time(), tokens_per_s=step_tokens / (now - mark))
        mark = now
        if step == backend.start_step:
            metrics.update({f"rows_{rule}": float(count) for rule, count in prepared.counts.items()})
        if writer is not None:
            writer.write(metrics)
            app_metrics.training_step(setup.run, metrics, step_tokens)
        if learner.snapshot_every and (step + 1) % learner.snapshot_every == 0:
            save_hf(output_dir / SNAPSHOTS_DIR / f"step_{step + 1}", backend, setup.policy_path)
        report(backend, metrics, step + 1, (step + 1) % learner.checkpoint_every == 0 or step + 1 == total_steps, setup)
    if writer is not None:
        writer.close()


