"""The Ray Train worker loop: offline data in, objective (+FPA) steps, checkpoints and metrics out.

Data order: every worker receives the whole dataset (`get_dataset_shard` of an unsplit dataset),
puts its rows in a canonical order and draws, per epoch, one seeded permutation. Global batch s is
rows perm[s*G:(s+1)*G]; worker r takes its contiguous slice of G / world rows and splits it into
micro-batches. So the gradient of a step depends on the data and the seed only: 1 or 2 workers,
1 or 2 accumulation steps, and a run resumed from its checkpoint take the same steps.
Normalisation: each micro-batch loss is divided by G (the global unit count); the backend
(learner/backends.py) scales it back by what its gradient reduction divides by (the contract of
fpa_ray.objectives). KTO's z0 is estimated once per step over the global batch (learner/step.py).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fpa_ray import metrics as app_metrics
from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig, TrackingConfig
from fpa_ray.learner.backends import STATE_DIR, build_backend, worker_device
from fpa_ray.learner.data import Kind, MicroBatching, prepare_examples
from fpa_ray.learner.entanglement import entanglement_metrics
from fpa_ray.learner.step import train_step
from fpa_ray.objectives import PairedBatch, get_objective
from fpa_ray.tracking import TrackingRun

SNAPSHOTS_DIR = "snapshots"  # step_<k>: HF policies kept every learner.snapshot_every steps, for evaluation


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


def global_order(num_examples: int, step: int, batch: int, seed: int) -> list[int]:
    """Example indices of global batch `step` (per-epoch seeded permutation, remainder dropped)."""
    per_epoch = num_examples // batch
    epoch, offset = divmod(step, per_epoch)
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return permutation[offset * batch : (offset + 1) * batch].tolist()


@contextmanager
def restored_checkpoint() -> Iterator[Path | None]:
    """The checkpoint Ray Train restores this worker group from, if any, as a local directory while
    the backend loads it: the storage's own directory, or a download removed afterwards (a copy
    per restore left in /tmp would be a model's size each time a worker group restarts)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


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


def report(backend, metrics: dict, step: int, save: bool, setup) -> None:
    """ray.train.report the step's metrics, with a checkpoint when `save`."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), backend, step, setup)
        has_files = any(Path(tmp).iterdir())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)


def save_hf(directory: Path, backend, tokenizer_path: str) -> None:
    """Hugging Face model + tokenizer (loadable by vLLM and transformers); ZeRO-3 gathers on every rank."""
    with backend.gathered():
        if backend.rank == 0:
            backend.unwrapped.save_pretrained(directory)
    if backend.rank == 0:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(directory)


def save_checkpoint(directory: Path, backend, step: int, setup) -> None:
    """HF model + tokenizer at the root, training state (the backend's, schedule, step) below."""
    state_dir = directory / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    backend.save_state(state_dir, {"step": step, "scheduler": backend.scheduler.state_dict(), "rng": torch.get_rng_state()})
    save_hf(directory, backend, setup.policy_path)
    if backend.rank == 0:
        (state_dir / "trainer_state.json").write_text(json.dumps({"step": step, "seed": setup.seed}))


class MetricsWriter:
    """metrics.jsonl in the output directory and the run's trackers (TensorBoard events in the output
    directory by default; rank 0 only)."""

    def __init__(self, output_dir: Path, start_step: int, tracking: TrackingRun | None = None, prefix: str = ""):
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        if self.path.exists():  # a resumed run redoes the steps after its checkpoint: drop their old lines
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        tracking = tracking or TrackingRun(TrackingConfig(), output_dir.name, str(output_dir.parent))
        self.trackers = tracking.open(prefix, output_dir / "tensorboard", start_step)

    def write(self, metrics: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics, sort_keys=True) + "\n")
        self.trackers.log(metrics, metrics["step"])

    def close(self) -> None:
        self.trackers.close()
