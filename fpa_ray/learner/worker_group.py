"""The learner group: Ray Train TorchTrainer runs of the offline loop (offline_loop.py) or the GRPO one (grpo_loop.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig
from fpa_ray.devices import collective_backend, stand_in_env
from fpa_ray.learner.backends import STATE_DIR
from fpa_ray.learner.data import REF_COLUMNS
from fpa_ray.learner.offline_loop import LearnerSetup, example_kind, train_loop
from fpa_ray.learner.reference import add_reference_logprobs
from fpa_ray.tracking import TrackingRun

TORCH_EXTENSIONS_DIR = Path(os.environ.get("FPA_RAY_CACHE", Path.home() / ".cache" / "fpa_ray")) / "torch_extensions"


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path  # Hugging Face model + tokenizer of the last step, loadable by vLLM and transformers
    metrics: list[dict]  # one per optimizer step, as in metrics.jsonl


def worker_env(learner: LearnerConfig) -> dict[str, str]:
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": str(TORCH_EXTENSIONS_DIR),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' load/save bars, once per checkpoint, drown the progress lines
        **stand_in_env(),
    }
    if collective_backend(learner.gpus_per_worker) == "gloo":  # computing on the CPU
        env.update(
            DS_ACCELERATOR="cpu",
            OMP_NUM_THREADS=str(max(1, int(learner.cpus_per_worker))),
            # Keep freed logits buffers in the process instead of page-faulting them back each step
            # (measured: 2.7x faster CPU steps at a 152k vocabulary, benchmarks/performance/fpa_overhead.py).
            MALLOC_MMAP_THRESHOLD_=str(2**32),
            MALLOC_TRIM_THRESHOLD_=str(2**36),
        )
    return env


class TrainStage:
    """Train `policy` on a Ray Dataset of pairs or labelled rows; reference = the data's generator."""

    def __init__(self, learner: LearnerConfig, objective: ObjectiveConfig, fpa: FPAConfig, seed: int):
        self.learner, self.objective, self.fpa, self.seed = learner, objective, fpa, seed

    def run(self, dataset, policy: Path, reference: Path, output_dir: Path, name: str = "train", run: str | None = None,
            tracking: TrackingRun | None = None, prefix: str = "") -> TrainResult:
        """`tracking`: the run's trackers, the learner's metrics logged as <prefix><name> (None: TensorBoard in output_dir)."""
        kind = example_kind(self.objective.name)
        if self.learner.reference == "precomputed" and not set(REF_COLUMNS[kind]) <= set(dataset.schema().names):
            # Once per dataset, on the learner's resources and in its precision: the workers then load
            # no reference and run no reference forward (but for exact FPA and KTO's z0, which need its logits).
            dataset = add_reference_logprobs(dataset, reference, kind, self.learner, num_actors=self.learner.num_workers)
        # Every worker reads all rows (offline_loop.py picks its slice): read them once into the object store.
        dataset = dataset.materialize()
        rows = dataset.count()
        if rows < self.learner.global_batch_size:  # fail here, not once per worker restart
            raise ValueError(f"the dataset has {rows} rows, fewer than learner.global_batch_size={self.learner.global_batch_size}")
        output_dir = output_dir.resolve()
        setup = LearnerSetup(self.learner, self.objective, self.fpa, self.seed, str(policy), str(reference), str(output_dir), run or name,
                             tracking, prefix)
        final = output_dir / "policy"
        with run_trainer(train_loop, {"setup": setup}, self.learner, output_dir, name, datasets={"train": dataset}).as_directory() as directory:
            _copy_model(Path(directory), final)
        metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line]
        return TrainResult(final, metrics)


def run_trainer(loop, loop_config: dict, learner: LearnerConfig, output_dir: Path, name: str, datasets: dict | None = None,
                bundle: dict[str, float] | None = None):
    """Run `loop` on the learner group (Ray Train TorchTrainer); returns the last checkpoint. `bundle`: each
    worker's Ray resources when they are not the learner section's alone (a colocated engine's CPUs)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker=loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=learner.num_workers,
            use_gpu=learner.gpus_per_worker > 0,
            resources_per_worker=bundle or {"CPU": learner.cpus_per_worker, **({"GPU": learner.gpus_per_worker} if learner.gpus_per_worker else {}),
                                            **learner.resources},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(output_dir / "ray_train"),
            # Starts that time out waiting for resources have their own budget (Ray's default: retry forever).
            failure_config=ray.train.FailureConfig(max_failures=learner.max_failures, controller_failure_limit=learner.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=learner.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env(learner)},
        ),
        datasets=datasets or {},
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # every worker sees all rows; offline_loop.py picks its slice
        torch_config=TorchConfig(backend=collective_backend(learner.gpus_per_worker)),
    )
    # Ray Train 2.60's controller takes one report per worker per poll, every 2 s by default, and
    # ray.train.report blocks until it is taken: measured 1.9 s per step. Poll every 20 ms (0.028 s).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.02")
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(learner.start_timeout_s)  # read by the controller it starts
    try:
        result = trainer.fit()
    except ray.train.ControllerError as error:
        if type(error.controller_failure).__name__ != "WorkerGroupStartupTimeoutError":
            raise
        raise LearnerUnschedulable(_shortfall(learner, name)) from error
    if result.checkpoint is None:
        raise RuntimeError(f"training {name!r} finished without a checkpoint (error: {result.error})")
    return result.checkpoint


class LearnerUnschedulable(RuntimeError):
    """The learner group's workers do not fit on the cluster's nodes (a node lost and not replaced)."""


def _shortfall(learner: LearnerConfig, name: str) -> str:
    import ray

    need = {"CPU": learner.cpus_per_worker, **({"GPU": learner.gpus_per_worker} if learner.gpus_per_worker else {}), **learner.resources}
    offered = [{k: v for k, v in node["Resources"].items() if k in need} for node in ray.nodes() if node["Alive"]]
    offered = [node for node in offered if node]  # nodes with none of them (a head without CPUs) left out
    fits = sum(int(min(node.get(k, 0) / v for k, v in need.items() if v > 0)) for node in offered)
    return (f"training {name!r}: its {learner.num_workers} workers x {need} did not start within learner.start_timeout_s="
            f"{learner.start_timeout_s:g} s in {learner.max_failures + 1} tries; the alive nodes offer {offered} in all, room for {fits} "
            "such workers (a node was lost and not replaced?). Add nodes, or lower learner.num_workers, and rerun the same command: "
            "finished stages and the last checkpoint are kept.")


def _copy_model(source: Path, destination: Path) -> None:
    """The HF files of a checkpoint, without its training state."""
    import shutil

    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(STATE_DIR))
