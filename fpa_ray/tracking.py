"""Experiment trackers: TensorBoard (on by default), MLflow and Weights & Biases.

One tracker run per fpa_ray run (named after it). The driver starts it (`TrackingRun.start`): the
ids go to `<run>/tracking.json`, so a resumed run, and the learner's rank 0 in its Ray Train worker,
log into the same one. What is logged:
- the learner's metrics every optimizer step, under the stage's prefix (`round_1/loss`,
  `grpo/reward_mean`), each prefix with its own step axis (`round_1/step`);
- the run's evaluation curve (`eval/pass_at_1`, per benchmark `eval/<label>/pass_at_1`, and the
  training `eval/node_hours` and CPU-/GPU-hours spent before each policy; step: the policy's index)
  and each stage's cost (`cost/<stage>/node_hours`, `/cpu_hours`, `/gpu_hours`, `/wall_s`);
- the resolved config as the run's parameters (flattened keys).

TensorBoard writes into the stage's directory (`<stage>/tensorboard`, the run's own for the curve);
MLflow into `tracking.mlflow_uri` (default: a file store `<output_dir>/mlruns`, read with `mlflow ui
--backend-store-uri <output_dir>/mlruns`; MLflow 3 keeps file stores in maintenance mode, so a
database or server URI gets its newer features); W&B into `tracking.project`, online or offline
(`tracking.wandb_mode`; offline runs upload with `wandb sync`). MLflow and W&B are the `tracking`
extra (`pip install -e ".[tracking]"`); asking for one that is not installed fails before any stage.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fpa_ray.config import TrackingConfig
from fpa_ray.run_files import write_json


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: a config as tracker parameters."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return flat


def check_installed(config: TrackingConfig) -> None:
    """Raise naming the tracker whose package is missing (before any stage runs)."""
    for tracker, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
        if tracker in config.trackers:
            try:
                __import__(module)
            except ImportError as error:
                raise RuntimeError(f"tracking.trackers names {tracker}, which is not installed: pip install -e \".[tracking]\"") from error


@dataclass(frozen=True)
class TrackingRun:
    """A run's trackers and their run ids: picklable, handed to the learner's workers."""

    config: TrackingConfig
    name: str
    output_dir: str
    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, config: TrackingConfig, name: str, run_dir: Path, params: dict) -> TrackingRun:
        """Open the run's MLflow and W&B runs (or find the ids a first attempt saved) and log `params`."""
        check_installed(config)
        path = run_dir / "tracking.json"
        ids = json.loads(path.read_text()) if path.exists() else {}
        run = cls(config, name, str(run_dir.parent), ids)
        if "mlflow" in config.trackers and "mlflow" not in ids:
            client = run.mlflow_client()
            experiment = client.get_experiment_by_name(config.project)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.project)
            from mlflow.entities import Param

            ids["mlflow"] = client.create_run(experiment_id, run_name=name).info.run_id
            params_list = [Param(key, value[:6000]) for key, value in flatten(params).items()]  # MLflow's limit on a value's length
            for start in range(0, len(params_list), 100):  # MLflow's limit on parameters per batch
                client.log_batch(ids["mlflow"], params=params_list[start : start + 100])
        if "wandb" in config.trackers and "wandb" not in ids:
            ids["wandb"] = uuid.uuid4().hex[:12]
            write_json(path, ids)
            with run.open("") as trackers:
                trackers.wandb.config.update(params, allow_val_change=True)
        write_json(path, ids)
        return run

    @property
    def mlflow_uri(self) -> str:
        return self.config.mlflow_uri or (Path(self.output_dir).resolve() / "mlruns").as_uri()

    def mlflow_client(self):
        from mlflow.tracking import MlflowClient

        if self.mlflow_uri.startswith("file:"):  # MLflow 3 keeps the file store (no database, no server) behind an opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return MlflowClient(self.mlflow_uri)

    def open(self, prefix: str, tensorboard_dir: Path | None = None, start_step: int = 0) -> Trackers:
        """The trackers for one stage's metrics, keyed `<prefix><name>`; TensorBoard into `tensorboard_dir`
        (its events after `start_step` dropped: a resumed stage redoes them)."""
        return Trackers(self, prefix, tensorboard_dir, start_step)


class Trackers:
    """Log metrics to every tracker of a TrackingRun (rank 0, or the driver); use as a context manager or close()."""

    def __init__(self, run: TrackingRun, prefix: str, tensorboard_dir: Path | None, start_step: int):
        self.prefix, self.tensorboard, self.mlflow, self.wandb = prefix, None, None, None
        trackers = run.config.trackers
        if "tensorboard" in trackers and tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1)
        if "mlflow" in trackers:
            self.mlflow, self.mlflow_run = run.mlflow_client(), run.ids["mlflow"]
        if "wandb" in trackers:
            import wandb

            self.wandb = wandb.init(project=run.config.project, id=run.ids["wandb"], name=run.name, resume="allow",
                                    dir=run.output_dir, mode=run.config.wandb_mode, reinit="create_new")
            if prefix:
                self.wandb.define_metric(f"{prefix}step")
                self.wandb.define_metric(f"{prefix}*", step_metric=f"{prefix}step")

    def log(self, metrics: dict[str, float], step: int) -> None:
        values = {f"{self.prefix}{key}": float(value) for key, value in metrics.items() if key != "step" and isinstance(value, (int, float))}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key.removeprefix(self.prefix), value, step)
        if self.mlflow is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(key, value, now, step) for key, value in values.items()])
        if self.wandb is not None:
            self.wandb.log({**values, **({f"{self.prefix}step": step} if self.prefix else {})})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
