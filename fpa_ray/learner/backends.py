"""Learner backends: one object per strategy owns the wrapped policy, its optimizer and schedule,
gradient accumulation, mixed precision and the training state in checkpoints.

Mixed precision as DeepSpeed and FSDP do it: master weights and optimizer state in fp32, compute in bf16.
- DDP keeps the parameters (the master copy) in fp32 and runs every forward under torch.autocast(bf16).
  AdamW on bf16 weights would round most updates away (at lr 5e-7, 10 steps moved 1.2% of them).
- DeepSpeed holds the module in bf16 and its bf16 mode keeps fp32 master partitions that the optimizer
  updates (ZeRO-1: BF16_Optimizer; ZeRO-2/3: the ZeRO optimizer's fp32 partitions).
Gradient accumulation: DDP skips the all-reduce on all but the last micro-batch (no_sync). DeepSpeed's
engine must never enter no_sync (ZeRO-1 asserts in step(), ZeRO-2/3 refuse the context); it is told
which micro-batch ends the step, since with a token budget their number changes from step to step.
The normalisation contract (fpa_ray.objectives): a micro-batch loss is already divided by the global
unit count, so each backend scales it back by what its reduction divides by (workers; DeepSpeed also
accumulation steps) before backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fpa_ray.config import LearnerConfig
from fpa_ray.learner.optim import build_optimizer

STATE_DIR = "training_state"


@dataclass(frozen=True)
class Precision:
    """How weights are stored and what the forward computes in."""

    param_dtype: torch.dtype
    compute_dtype: torch.dtype

    def autocast(self, device: torch.device):
        """The forward's context: autocast to the compute dtype when weights are stored wider."""
        if self.param_dtype == self.compute_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.compute_dtype)


def precision_for(learner: LearnerConfig, device: torch.device) -> Precision:
    """bf16 compute when asked (or `auto` on a CUDA GPU with bf16), fp32 master weights either way."""
    bf16 = learner.precision == "bf16" or (learner.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not bf16:
        return Precision(torch.float32, torch.float32)
    if learner.strategy == "deepspeed":
        return Precision(torch.bfloat16, torch.bfloat16)  # DeepSpeed's bf16 mode holds the fp32 master copy
    return Precision(torch.float32, torch.bfloat16)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_policy(path: str | Path, learner: LearnerConfig, precision: Precision, device: torch.device, restore_dir: Path | None = None):
    """The policy to train, stored in the precision's parameter dtype: `path`'s weights, or a checkpoint's
    in `restore_dir`. With learner.lora, `path` is the base and the adapters are fresh or the checkpoint's.
    With gradient checkpointing each decoder layer keeps only its input and recomputes the rest in the
    backward pass (non-reentrant, as the anchors run it under DeepSpeed); transformers checkpoints only in
    train mode, which the policies here (Qwen2, Llama: no dropout) compute exactly as in eval mode, as
    they do with adapters (whose dropout acts in train mode)."""
    from transformers import AutoModelForCausalLM

    if learner.lora is None:
        return _checkpointed(AutoModelForCausalLM.from_pretrained(restore_dir or path, dtype=precision.param_dtype).to(device), learner)
    from fpa_ray.learner.lora import ADAPTER_DIR, with_adapters

    base = AutoModelForCausalLM.from_pretrained(path, dtype=precision.param_dtype).to(device)
    policy = with_adapters(base, learner.lora, restore_dir / ADAPTER_DIR if restore_dir is not None else None)
    policy.train()
    return _checkpointed(policy, learner)


def _checkpointed(policy, learner: LearnerConfig):
    if learner.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.train()
    return policy


class DDPBackend:
    """torch DistributedDataParallel (gloo on CPU, NCCL on GPUs); fp32 weights, autocast compute."""

    def __init__(self, learner: LearnerConfig, policy_path: str, restore_dir: Path | None, total_steps: int, device: torch.device):
        self.learner, self.device = learner, device
        self.precision = precision_for(learner, device)
        self.rank, self.world = _world()
        self.policy_path = policy_path
        # A DDP checkpoint holds the fp32 master weights themselves (with LoRA, the adapters), so resuming loads them.
        self.unwrapped = load_policy(policy_path, learner, self.precision, device, restore_dir)
        self.model = self.unwrapped
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.unwrapped, device_ids=ids, find_unused_parameters=False)
        self.optimizer, self.scheduler = build_optimizer(self.unwrapped, learner, total_steps)
        self.start_step = 0
        if restore_dir is not None:
            state = torch.load(restore_dir / STATE_DIR / "state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_step = state["step"]

    def frozen_reference(self, path: str):
        """The frozen reference, a whole copy in each worker (with LoRA and the starting policy as reference: the policy, adapters off)."""
        return adapters_off(self, path) or load_reference(path, self.precision, self.device)

    def micro_batch(self, last: bool):
        """Forward and backward of one micro-batch: all-reduce only on the step's last one."""
        stack = contextlib.ExitStack()
        if not last and hasattr(self.model, "no_sync"):
            stack.enter_context(self.model.no_sync())
        stack.enter_context(self.precision.autocast(self.device))
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.world).backward()  # DDP averages over workers; the contract needs their sum

    def step(self) -> float:
        """Clip, step, schedule; returns the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unwrapped.parameters(), self.learner.grad_clip or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def master_weights(self) -> dict[str, torch.Tensor]:
        """fp32 copies of the weights the optimizer updates (the same on every rank), on the model's device."""
        return {name: p.detach().float().clone() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def received_gradient(self) -> dict[str, torch.Tensor]:
        """Entries whose gradient AdamW could act on (see `above_adam_eps`)."""
        return {name: above_adam_eps(self.optimizer.state[p]["exp_avg_sq"], self.learner, self.scheduler.last_epoch)
                for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def gathered(self, params=None):
        return contextlib.nullcontext()

    def save_state(self, state_dir: Path, state: dict) -> None:
        if self.rank == 0:
            torch.save({**state, "optimizer": self.optimizer.state_dict()}, state_dir / "state.pt")


class DeepSpeedBackend:
    """DeepSpeed ZeRO-1/2/3 with the client AdamW; bf16 mode when the precision asks for it."""

    def __init__(self, learner: LearnerConfig, policy_path: str, restore_dir: Path | None, total_steps: int, device: torch.device):
        import deepspeed

        self.learner, self.device = learner, device
        self.precision = precision_for(learner, device)
        self.rank, self.world = _world()
        if device.type == "cpu":
            # DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce at its first
            # init (63 s on this 2-core machine, per extensions directory) that only inference tensor
            # parallelism calls (inference_all_reduce); ZeRO's collectives go through torch.distributed.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.policy_path = policy_path
        policy = load_policy(policy_path, learner, self.precision, device)  # a checkpoint's weights (adapters too) come from DeepSpeed's state
        optimizer, scheduler = build_optimizer(policy, learner, total_steps)
        # DeepSpeed steps the schedule at its accumulation boundaries, once per optimizer step.
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=self.config(learner, self.precision)
        )
        self.unwrapped = self.model.module
        self.start_step = 0
        if restore_dir is not None:
            self.model.load_checkpoint(str(restore_dir / STATE_DIR / "deepspeed"), tag="state", load_lr_scheduler_states=False)
            state = torch.load(restore_dir / STATE_DIR / "state.pt", weights_only=False)
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_step = state["step"]

    @staticmethod
    def config(learner: LearnerConfig, precision: Precision) -> dict:
        return {
            "train_micro_batch_size_per_gpu": learner.micro_batch_size,
            "gradient_accumulation_steps": learner.accumulation_steps,
            "gradient_clipping": learner.grad_clip or 0.0,
            "zero_optimization": {"stage": learner.zero_stage},
            "zero_allow_untested_optimizer": True,  # the client AdamW: DeepSpeed's fused ones need a compiler per node
            "bf16": {"enabled": precision.param_dtype == torch.bfloat16},
            "steps_per_print": 10**9,
        }

    def frozen_reference(self, path: str):
        """The frozen reference: under ZeRO-3 sharded across the workers as the policy is (OpenRLHF's way), each
        forward gathering its layers, so no worker holds a whole copy; under ZeRO-1/2 (which shard no weights)
        a whole copy. Every worker then runs the same number of reference forwards, as it does the policy's.
        With LoRA and the starting policy as reference: the policy itself, adapters off."""
        reference = adapters_off(self, path)
        if reference is not None:
            return reference
        if self.learner.zero_stage != 3:
            return load_reference(path, self.precision, self.device)
        import deepspeed

        config = {**self.config(self.learner, self.precision), "zero_optimization": {"stage": 3}}
        engine, *_ = deepspeed.initialize(model=load_reference(path, self.precision, self.device), config=config)
        engine.train(False)  # inference mode; DeepSpeed's train()/eval() return nothing, so not chained
        return engine

    def micro_batch(self, last: bool):
        self.model.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()  # the module is already in the compute dtype

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by its configured accumulation steps and averages over workers: undo both.
        self.model.backward(loss * self.world * self.learner.accumulation_steps)
        self.model.step()  # every micro-batch; the update happens at the boundary

    def step(self) -> float:
        return float(self.model.get_global_grad_norm() or 0.0)

    def master_weights(self) -> dict[str, torch.Tensor]:
        """The fp32 master weights the optimizer updates, gathered whole (every rank must call it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(p).detach().float().clone() for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def received_gradient(self) -> dict[str, torch.Tensor]:
        """Entries whose gradient AdamW could act on (see `above_adam_eps`; every rank must call it)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        return {name: above_adam_eps(safe_get_full_optimizer_state(p, "exp_avg_sq"), self.learner, self.scheduler.last_epoch)
                for name, p in self.unwrapped.named_parameters() if p.requires_grad}

    def gathered(self, params=None):
        """Full parameters (all of them, or `params`) for reading: ZeRO-3 gathers them on every rank."""
        if self.learner.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.unwrapped.parameters()) if params is None else list(params), modifier_rank=None)

    def save_state(self, state_dir: Path, state: dict) -> None:
        self.model.save_checkpoint(str(state_dir / "deepspeed"), tag="state")  # every rank writes its partition
        if self.rank == 0:
            torch.save(state, state_dir / "state.pt")


def adapters_off(backend, path: str):
    """The reference as the policy with its adapters disabled, when the run trains adapters and its
    reference is the starting policy (the adapters' base); None otherwise."""
    if backend.learner.lora is None or str(path) != str(backend.policy_path):
        return None
    from fpa_ray.learner.lora import AdaptersOff

    return AdaptersOff(backend.unwrapped)


def above_adam_eps(exp_avg_sq: torch.Tensor, learner: LearnerConfig, steps: int, eps: float = 1e-8) -> torch.Tensor:
    """Entries whose bias-corrected RMS gradient exceeds AdamW's eps. Below it AdamW's update is
    lr * |g| / eps, which can be under an fp32 weight's resolution: such an entry got a gradient too
    small to move it, in any precision, so checks of mixed precision leave it out."""
    correction = 1 - learner.adam_betas[1] ** max(1, steps)
    return (exp_avg_sq.detach().float() / correction).sqrt() > eps


Backend = DDPBackend | DeepSpeedBackend
BACKENDS = {"ddp": DDPBackend, "deepspeed": DeepSpeedBackend}


def build_backend(learner: LearnerConfig, policy_path: str, restore_dir: Path | None, total_steps: int, device: torch.device) -> Backend:
    """The strategy's backend, restored from `restore_dir` when given."""
    return BACKENDS[learner.strategy](learner, policy_path, restore_dir, total_steps, device)


def worker_device(learner: LearnerConfig) -> torch.device:
    """The device of this Ray Train worker: its GPU (Ray Train maps local ranks to devices), or the CPU."""
    from fpa_ray.devices import compute_device

    if compute_device(learner.gpus_per_worker, "the learner worker").type == "cpu":
        return torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()


def load_reference(path: str, precision: Precision, device: torch.device):
    """The frozen reference, stored as the policy is, so l - l_ref is exactly 0 at step 0."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=precision.param_dtype).to(device).eval().requires_grad_(False)
