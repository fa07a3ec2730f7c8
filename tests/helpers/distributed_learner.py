"""Run the learner's own optimizer step (fpa_ray.learner.optimizer_step.train_step) on real gloo process groups,
without Ray: the strategies, splits and precisions that Ray Train workers would run, in seconds.

Each case is one fresh backend (DDP or DeepSpeed ZeRO-1/2/3) on a saved random tiny Qwen2, trained
`steps` steps on a fixed global batch; rank 0 saves the metrics, the fp32 master-weight update, which
entries moved at some step and which ever received a gradient to `<out>/<key>.pt`. The reference is the policy with 4x sharper logits.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path

import torch

VOCAB = 97
GLOBAL_BATCH = 8


@dataclass(frozen=True)
class Case:
    key: str
    objective: str
    fpa: bool
    world: int
    accumulation: int
    learner: dict = field(default_factory=dict)  # LearnerConfig fields beyond the split
    steps: int = 1
    params: dict = field(default_factory=dict)
    reference_is_policy: bool = False  # with LoRA: the policy with its adapters off
    resume_at: int | None = None  # checkpoint before this step, then go on from the checkpoint in a new backend
    fpa_mode: str = "exact"

    @property
    def micro_batch_size(self) -> int:
        return GLOBAL_BATCH // (self.world * self.accumulation)


def save_random_policy(directory: Path, sharpen: float = 1.0) -> Path:
    """A random tiny Qwen2; `sharpen` scales its logits (the final norm), so a sharpened copy as the
    reference gives random responses lower log-probs than the policy: l - l_ref > 0, KTO's z0 > 0."""
    from fpa_ray.tiny import qwen2_config, random_qwen2

    model = random_qwen2(qwen2_config(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_kv_heads=1), seed=1)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpen)
    model.save_pretrained(directory)
    return directory


def examples(kind: str, count: int = GLOBAL_BATCH, seed: int = 0):
    """Random rows of plausible shape: paired rows share a prefix and differ at the end; half the labelled rows are correct."""
    from fpa_ray.learner.data import Example

    generator = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high, (1,), generator=generator))
        return torch.randint(1, VOCAB, (length,), generator=generator).tolist()

    rows = []
    for i in range(count):
        prompt, shared = tuple(ids(3, 7)), ids(2, 6)
        if kind == "paired":
            rows.append(Example(prompt, (tuple(shared + ids(1, 5)), tuple(shared + ids(1, 5)))))
        else:
            rows.append(Example(prompt, (tuple(shared + ids(1, 5)),), label=i % 2 == 0))
    return rows


def _worker(rank: int, world: int, port: int, model_dir: str, reference_dir: str, cases: list[Case], out: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from fpa_ray.learner.worker_group import TORCH_EXTENSIONS_DIR

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS_DIR))
    import torch.distributed as dist

    from fpa_ray.config import FPAConfig, LearnerConfig
    from fpa_ray.learner.backends import build_backend
    from fpa_ray.learner.offline_loop import example_kind, needs_reference_model
    from fpa_ray.learner.data import global_order
    from fpa_ray.learner.data import MicroBatching
    from fpa_ray.learner.optimizer_step import train_step
    from fpa_ray.learner.worker_records import SentWeights, save_checkpoint
    from fpa_ray.objectives import get_objective

    dist.init_process_group("gloo", rank=rank, world_size=world)
    device = torch.device("cpu")
    try:
        for case in cases:
            torch.manual_seed(0)
            learner = LearnerConfig(num_workers=world, global_batch_size=GLOBAL_BATCH, micro_batch_size=case.micro_batch_size, **case.learner)
            fpa = FPAConfig(enabled=case.fpa, lam=1.0, chunk_size=3, mode=case.fpa_mode)
            kind = example_kind(case.objective)
            rows = examples(kind)
            backend = build_backend(learner, model_dir, None, case.steps, device)
            needs_reference = needs_reference_model(case.objective, fpa, False)
            reference = backend.frozen_reference(model_dir if case.reference_is_policy else reference_dir) if needs_reference else None
            own_weights = reference is not None and hasattr(reference, "parameters")  # not the policy with its adapters off
            before = previous = backend.master_weights()
            moved = {name: torch.zeros_like(w, dtype=torch.bool) for name, w in before.items()}  # at some step
            metrics = []
            for step in range(case.steps):
                if step == case.resume_at:  # every rank writes its part, then a new backend restores from it
                    checkpoint = Path(out) / f"{case.key}-checkpoint"
                    save_checkpoint(checkpoint, backend, step, SimpleNamespace(policy_path=model_dir, seed=0))
                    dist.barrier()
                    if hasattr(backend.model, "destroy"):
                        backend.model.destroy()
                    backend = build_backend(learner, model_dir, checkpoint, case.steps, device)
                    assert backend.start_step == step
                    if needs_reference:
                        reference = backend.frozen_reference(model_dir if case.reference_is_policy else reference_dir)
                metrics.append(train_step(backend, get_objective(case.objective), case.params, reference, rows,
                                          global_order(len(rows), step, GLOBAL_BATCH, 0), kind, 0, fpa, MicroBatching.of(learner),
                                          learner.max_length, precomputed=False))
                current = backend.master_weights()
                moved = {name: moved[name] | (current[name] != previous[name]) for name in moved}
                previous = current
            received = backend.received_gradient()
            sent = None
            if case.learner.get("lora") is not None:  # what GRPO's sync sends: ZeRO-3 gathers the adapters on every rank
                weights = SentWeights(backend, model_dir)
                with weights.gathered():
                    sent = {name: tensor.detach().clone() for name, tensor in weights.named()}
            if rank == 0:
                update = {name: previous[name] - before[name] for name in before}
                torch.save({"metrics": metrics, "update": update, "moved": moved, "received": received, "sent": sent,
                            "checkpointing": backend.unwrapped.is_gradient_checkpointing and backend.unwrapped.training,
                            # the reference's elements this worker holds between forwards (ZeRO-3: its partition only)
                            "reference_held": None if not own_weights else sum(getattr(p, "ds_tensor", p.data).numel() for p in reference.parameters()),
                            "reference_total": None if not own_weights else sum(getattr(p, "ds_numel", p.numel()) for p in reference.parameters())},
                           Path(out) / f"{case.key}.pt")
    finally:
        dist.destroy_process_group()


def run_cases(cases: list[Case], model_dir: Path, reference_dir: Path, out: Path) -> dict[str, dict]:
    """Every case, grouped into one process group per world size; returns key -> saved result.

    The reference differs from the policy: with the same weights FPA's extrapolation and KTO's z0
    would be 0 at the first step, and the checks would not see them."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    for world in sorted({case.world for case in cases}):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        group = [case for case in cases if case.world == world]
        mp.spawn(_worker, args=(world, port, str(model_dir), str(reference_dir), group, str(out)), nprocs=world, join=True)
    return {case.key: torch.load(out / f"{case.key}.pt", weights_only=False) for case in cases}
