"""The Ray Train worker loop: offline data in, objective (+FPA) steps, checkpoints and metrics out.

Data order: every worker receives the whole dataset (`get_dataset_shard` of an unsplit dataset),
puts its rows in a canonical order and draws, per epoch, one seeded permutation. Global batch s is
rows perm[s*G:(s+1)*G]; worker r takes its contiguous slice of G / world rows and splits it into
micro-batches. So the gradient of a step depends on the data and the seed only: 1 or 2 workers,
1 or 2 accumulation steps, and a run resumed from its checkpoint take the same steps.
Normalisation: each micro-batch loss is divided by G (the global unit count); DDP and DeepSpeed
average gradients over workers and DeepSpeed also over accumulation steps, so the loss is scaled
back by those factors before backward (the contract of fpa_ray.objectives).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fpa_ray import metrics as app_metrics
from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig
from fpa_ray.learner.data import Kind, collate, prepare_examples
from fpa_ray.learner.optim import build_optimizer
from fpa_ray.learner.step import objective_loss
from fpa_ray.objectives import PairedBatch, get_objective

STATE_DIR = "training_state"
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


def _kind(objective_name: str) -> Kind:
    return "paired" if get_objective(objective_name).batch_type is PairedBatch else "labelled"


def torch_dtype(learner: LearnerConfig, device: torch.device) -> torch.dtype:
    if learner.precision == "bf16":
        return torch.bfloat16
    if learner.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _deepspeed_config(learner: LearnerConfig, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": learner.accumulation_steps,
        "gradient_clipping": learner.grad_clip or 0.0,
        "zero_optimization": {"stage": learner.zero_stage},
        "zero_allow_untested_optimizer": True,  # the client AdamW: DeepSpeed's fused ones need a compiler per node
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }


def global_order(num_examples: int, step: int, batch: int, seed: int) -> list[int]:
    """Example indices of global batch `step` (per-epoch seeded permutation, remainder dropped)."""
    per_epoch = num_examples // batch
    epoch, offset = divmod(step, per_epoch)
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return permutation[offset * batch : (offset + 1) * batch].tolist()


@dataclass
class TrainedModel:
    """The policy as the strategy wraps it, with its optimizer and schedule, at `start_step`."""

    model: Any  # DDP module or DeepSpeed engine: forward, backward
    unwrapped: Any  # the Hugging Face model inside it: save_pretrained
    optimizer: Any
    scheduler: Any
    start_step: int


def restored_checkpoint() -> Path | None:
    """A local copy of the checkpoint Ray Train restores this worker group from, if any."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    restore_dir = Path(tempfile.mkdtemp(prefix="fpa-restore-"))
    with checkpoint.as_directory() as directory:
        shutil.copytree(directory, restore_dir, dirs_exist_ok=True)
    return restore_dir


def build_model(learner: LearnerConfig, policy_path: str, restore_dir: Path | None, total_steps: int, dtype, device) -> TrainedModel:
    """Load the policy (or the restored checkpoint), wrap it for DDP or DeepSpeed, restore the training state."""
    import ray.train.torch
    from transformers import AutoModelForCausalLM

    source = restore_dir if restore_dir is not None and learner.strategy == "ddp" else policy_path
    policy = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    optimizer, scheduler = build_optimizer(policy, learner, total_steps)
    start_step = 0
    if learner.strategy == "ddp":
        model = ray.train.torch.prepare_model(policy, parallel_strategy_kwargs={"find_unused_parameters": False})
        unwrapped = model.module if hasattr(model, "module") else model
        if restore_dir is not None:
            state = torch.load(restore_dir / STATE_DIR / "state.pt", weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_step = state["step"]
    else:
        import deepspeed

        # DeepSpeed steps the schedule at its accumulation boundaries, once per optimizer step.
        model, optimizer, _, scheduler = deepspeed.initialize(
            model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=_deepspeed_config(learner, dtype == torch.bfloat16)
        )
        unwrapped = model.module
        if restore_dir is not None:
            model.load_checkpoint(str(restore_dir / STATE_DIR / "deepspeed"), tag="state", load_lr_scheduler_states=False)
            state = torch.load(restore_dir / STATE_DIR / "state.pt", weights_only=False)
            scheduler.load_state_dict(state["scheduler"])
            start_step = state["step"]
    return TrainedModel(model, unwrapped, optimizer, scheduler, start_step)


def grad_sync(model, last: bool):
    """DDP all-reduces gradients only on the step's last micro-batch (forward and backward inside)."""
    return contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()


def backward(model, loss: torch.Tensor, learner: LearnerConfig, world: int) -> None:
    """Backpropagate one micro-batch's loss under the normalisation contract."""
    if learner.strategy == "ddp":
        (loss * world).backward()  # DDP averages over workers; the contract needs their sum
    else:
        model.backward(loss * world * learner.accumulation_steps)
        model.step()  # every micro-batch; DeepSpeed applies the update at the boundary


def optimizer_step(model, optimizer, scheduler, learner: LearnerConfig) -> float:
    """Clip, step and schedule (DeepSpeed did it in backward); returns the gradient norm."""
    if learner.strategy == "ddp":
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), learner.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)
    return float(model.get_global_grad_norm() or 0.0)


def train_loop(config: dict) -> None:
    """Entry point of each Ray Train worker."""
    import ray.train
    import ray.train.torch

    setup: LearnerSetup = config["setup"]
    learner, fpa = setup.learner, setup.fpa
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dtype = torch_dtype(learner, device)
    torch.manual_seed(setup.seed)
    objective = get_objective(setup.objective.name)
    kind = _kind(setup.objective.name)

    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    exact_fpa = fpa.enabled and fpa.mode == "exact"
    needs_ref_model = (objective.needs_reference or fpa.enabled) and (not precomputed or exact_fpa or objective.needs_kl_reference)

    trained = build_model(learner, setup.policy_path, restored_checkpoint(), total_steps, dtype, device)
    model, unwrapped, start_step = trained.model, trained.unwrapped, trained.start_step
    reference = None
    if needs_ref_model:
        reference = AutoModelForCausalLM.from_pretrained(setup.reference_path, dtype=dtype).to(device).eval().requires_grad_(False)

    output_dir = Path(setup.output_dir)
    writer = MetricsWriter(output_dir, start_step) if rank == 0 else None
    local = G // world
    params = setup.objective.params
    mark = time.perf_counter()  # throughput counts everything between steps, reporting and checkpoints included
    for step in range(start_step, total_steps):
        lr = trained.scheduler.get_last_lr()[0]
        indices = global_order(len(examples), step, G, setup.seed)[rank * local : (rank + 1) * local]
        micro_batches = [indices[i : i + learner.micro_batch_size] for i in range(0, local, learner.micro_batch_size)]
        step_metrics = StepMetrics()
        for j, ids in enumerate(micro_batches):
            batch, ref_logp = collate([examples[i] for i in ids], kind, tokenizer.pad_token_id)
            batch = type(batch)(*(None if t is None else t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.response_mask, batch.correct)))
            with grad_sync(model, last=j == len(micro_batches) - 1):
                out = objective_loss(objective, params, model, reference, batch, fpa, normalizer=G, ref_logp=None if not precomputed else ref_logp)
                backward(model, out.loss, learner, world)
            step_metrics.add(out.metrics, float(out.metrics["num_units"]), float(batch.attention_mask.sum()))
        grad_norm = optimizer_step(model, trained.optimizer, trained.scheduler, learner)
        metrics = step_metrics.reduce()
        now = time.perf_counter()
        step_tokens = metrics.pop("tokens")
        metrics.update(step=step + 1, lr=lr, grad_norm=grad_norm, time=time.time(), tokens_per_s=step_tokens / (now - mark))
        mark = now
        if step == start_step:
            metrics.update({f"rows_{rule}": float(count) for rule, count in prepared.counts.items()})
        if writer is not None:
            writer.write(metrics)
            app_metrics.training_step(setup.run, metrics, step_tokens)
        if learner.snapshot_every and (step + 1) % learner.snapshot_every == 0:
            save_hf(output_dir / SNAPSHOTS_DIR / f"step_{step + 1}", unwrapped, learner, setup.policy_path, rank)
        save = (step + 1) % learner.checkpoint_every == 0 or step + 1 == total_steps
        if save:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(Path(tmp), model, unwrapped, trained.optimizer, trained.scheduler, step + 1, learner, setup, rank)
                has_files = any(Path(tmp).iterdir())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)
        else:
            ray.train.report(metrics)
    if writer is not None:
        writer.close()


class StepMetrics:
    """Unit-weighted means of one optimizer step's metrics over every micro-batch of every worker.

    A metric can be missing from a micro-batch (a labelled batch with no incorrect sample has no
    C_l), so each key is weighted by the units of the micro-batches that report it, and the workers
    exchange their sums as objects: an all-reduce of one tensor per worker would pair different keys
    (and, with different lengths, kill the process group) whenever their key sets differ.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.units = 0.0
        self.tokens = 0.0

    def add(self, metrics: dict, units: float, tokens: float) -> None:
        for key, value in metrics.items():
            if key != "num_units":
                self.sums[key] = self.sums.get(key, 0.0) + float(value) * units
                self.weights[key] = self.weights.get(key, 0.0) + units
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
        result = {key: sums[key] / weights[key] for key in sorted(sums) if weights[key] > 0}
        result["num_units"] = sum(part[2] for part in parts)
        result["tokens"] = sum(part[3] for part in parts)
        return result


def save_hf(directory: Path, unwrapped, learner: LearnerConfig, tokenizer_path: str, rank: int) -> None:
    """Hugging Face model + tokenizer (loadable by vLLM and transformers); ZeRO-3 gathers on every rank."""
    gather = contextlib.nullcontext()
    if learner.strategy == "deepspeed" and learner.zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None)
    with gather:
        if rank == 0:
            unwrapped.save_pretrained(directory)
    if rank == 0:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(directory)


def save_checkpoint(directory: Path, model, unwrapped, optimizer, scheduler, step: int, learner: LearnerConfig, setup, rank: int) -> None:
    """HF model + tokenizer at the root, training state below."""
    state_dir = directory / STATE_DIR
    if learner.strategy == "deepspeed":
        model.save_checkpoint(str(state_dir / "deepspeed"), tag="state")  # every rank writes its partition
    save_hf(directory, unwrapped, learner, setup.policy_path, rank)
    if rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {"step": step, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
        if learner.strategy == "ddp":
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, state_dir / "state.pt")
        (state_dir / "trainer_state.json").write_text(json.dumps({"step": step, "seed": setup.seed}))


class MetricsWriter:
    """metrics.jsonl and TensorBoard events in the output directory (rank 0 only)."""

    def __init__(self, output_dir: Path, start_step: int):
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.jsonl"
        if self.path.exists():  # a resumed run redoes the steps after its checkpoint: drop their old lines
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, metrics: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics, sort_keys=True) + "\n")
        for key, value in metrics.items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, metrics["step"])

    def close(self) -> None:
        self.tensorboard.close()

