"""What a learner worker leaves behind: checkpoints Ray Train records and restores, Hugging Face
policies, and the metrics of every optimizer step (metrics.jsonl and the run's trackers). Both
loops (offline_loop.py, grpo_loop.py) write through these.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fpa_ray.config import TrackingConfig
from fpa_ray.learner.backends import STATE_DIR
from fpa_ray.tracking import TrackingRun

SNAPSHOTS_DIR = "snapshots"  # step_<k>: HF policies kept for evaluation (learner.snapshot_every, grpo.eval_every)


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
    """Hugging Face model + tokenizer (loadable by vLLM and transformers); ZeRO-3 gathers on every rank.
    With LoRA the model is the merged one, the adapter beside it (learner/lora.py)."""
    with backend.gathered():
        if backend.rank == 0:
            if backend.learner.lora is None:
                backend.unwrapped.save_pretrained(directory)
            else:
                from fpa_ray.learner.lora import save_merged

                save_merged(backend.unwrapped, directory)
    if backend.rank == 0:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(directory)


class SentWeights:
    """What the samplers need of the learner's policy after an update, as the weight transports
    (fpa_ray/weights/transports.py) send it: every weight by name, or with learner.lora the adapters
    alone (lora.adapter_weights), which each engine merges into the weights it started from."""

    def __init__(self, backend, tokenizer_path: str):
        self.backend, self.tokenizer_path, self.rank = backend, tokenizer_path, backend.rank
        self.lora = backend.learner.lora is not None

    def gathered(self):
        """ZeRO-3: the full tensors of what is sent (the adapters alone with LoRA), on every rank."""
        return self.backend.gathered([p for p in self.backend.unwrapped.parameters() if p.requires_grad] if self.lora else None)

    def named(self) -> list[tuple[str, torch.Tensor]]:
        """The tensors to send, by name (inside `gathered`)."""
        if not self.lora:
            return list(self.backend.unwrapped.state_dict().items())
        from fpa_ray.learner.lora import adapter_weights

        return adapter_weights(self.backend.unwrapped)

    def save(self, directory: Path) -> None:
        """The disk transport's copy (every rank calls it): a Hugging Face model, or the adapters' tensors."""
        if not self.lora:
            save_hf(directory, self.backend, self.tokenizer_path)
            return
        from safetensors.torch import save_file

        with self.gathered():
            if self.rank == 0:
                save_file({name: tensor.detach().contiguous().cpu() for name, tensor in self.named()}, directory / "adapters.safetensors")


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
