"""How the learner's new weights reach the live samplers: one sender per `grpo.weight_sync`.

Every learner rank calls `send` after each update (ZeRO-3 gathers the full tensors on every rank;
the probe's forward runs on every rank); rank 0 sends, and the rollout controller loads the
weights into every sampler engine in place, probing the first against the learner's log-probs.
`send` returns that probe's gap on rank 0 (None elsewhere, or without a probe).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fpa_ray.learner.backends import STATE_DIR
from fpa_ray.learner.loop import save_hf

WEIGHTS_DIR = "weights"  # the latest policy, what the samplers load with weight_sync=disk


class CollectiveSender:
    """Over a collective group of rank 0 and every sampler worker (NCCL on GPUs, gloo on CPU),
    one broadcast per tensor, as OpenRLHF, TRL and vLLM's weight transfer do. The group is opened
    on the first send and again after the sampler pool restarted."""

    uses_probe = True  # the learner's probe log-probs go along

    def __init__(self, controller, run: str, device, join_timeout_s: float, transfer_timeout_s: float):
        self.controller, self.run, self.device = controller, run, device
        self.join_timeout_s, self.transfer_timeout_s = join_timeout_s, transfer_timeout_s
        self.group = None  # its GroupAddress, on rank 0
        self.opened = 0

    def _open(self) -> bool:
        """Open a new group with every sampler; False when a sampler was lost before it joined (the
        controller then restarted the pools): a wait of its own would last until the join timeout."""
        import ray
        import torch.distributed as dist

        from fpa_ray.sampler import weight_group

        backend = weight_group.backend_for(self.device)
        world = 1 + ray.get(self.controller.weight_group_ranks.remote())
        self.opened += 1
        address = weight_group.new_address(f"{self.run}-weights-{self.opened}", world, backend, self.join_timeout_s, self.transfer_timeout_s)
        joined = self.controller.open_weight_group.remote(address)
        try:
            weight_group.join(address, 0, address.host)
            opened = True
        except dist.DistStoreError as error:
            print(f"[grpo] the weight group did not open within {self.join_timeout_s:.0f} s: {error}", flush=True)
            opened = False
        if ray.get(joined) and opened:
            self.group = address
            return True
        weight_group.leave(address.name)
        return False

    def send(self, backend, step: int, expected: list[float] | None) -> float | None:
        import ray

        from fpa_ray.sampler import weight_group

        with backend.gathered():
            if backend.rank != 0:
                return None
            state = backend.unwrapped.state_dict()
            for _ in range(2):  # a sampler lost while joining or mid-broadcast: the pool restarts, and one more try on a new group
                if self.group is None and not self._open():
                    continue
                reply = self.controller.receive.remote(weight_group.specs(state.items()), step, expected)
                try:
                    weight_group.send(self.group.name, state.values(), self.device)
                except RuntimeError as error:  # a receiver died or stopped answering; the controller's reply says what next
                    print(f"[grpo] weight broadcast failed: {error}", flush=True)
                    self.reset()  # aborted: nothing more goes over this group
                answer = ray.get(reply)
                if not answer["resync"]:
                    return answer["gap"]
                self.reset()
        raise RuntimeError("a sampler actor died during two weight syncs in a row; the run stops here (rerun to resume)")

    def reset(self) -> None:
        if self.group is not None:
            from fpa_ray.sampler import weight_group

            weight_group.leave(self.group.name)
        self.group = None


class ObjectStoreSender:
    """Rank 0 puts the full state dict in the Ray object store and hands over the reference; the
    controller keeps it, so a restarted sampler is synced again without the learner."""

    uses_probe = True

    def __init__(self, controller):
        self.controller = controller

    def send(self, backend, step: int, expected: list[float] | None) -> float | None:
        import ray

        with backend.gathered():  # put while gathered: ZeRO-3 frees the full tensors on leaving
            weights = ray.put({name: tensor.detach().cpu() for name, tensor in backend.unwrapped.state_dict().items()}) if backend.rank == 0 else None
        return ray.get(self.controller.sync.remote([weights], step, expected)) if backend.rank == 0 else None

    def reset(self) -> None:
        pass


class SameDeviceSender:
    """The colocated layout's: every rank hands its own engine, on its own device, the gathered tensors
    (sampler/same_device.py: CUDA IPC handles, or the object store on CPU) and waits until it has loaded
    them; then rank 0 tells the controller. An engine that restarted holds the start weights: `reset`
    looks the engines up again and the learner sends once more."""

    uses_probe = True

    def __init__(self, controller, tolerance: float):
        self.controller, self.tolerance = controller, tolerance
        self.engine = None

    def send(self, backend, step: int, expected: list[float] | None) -> float | None:
        import time

        import ray
        import torch
        import torch.distributed as dist

        from fpa_ray.sampler.same_device import share

        started = time.time()
        if self.engine is None:
            self.engine = ray.get(self.controller.engines.remote())[backend.rank]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the memory training cached goes back to the device: the engine wakes into it
        with backend.gathered():  # ZeRO-3: the full tensors on every rank, until every engine has loaded them
            named = [(name, tensor.detach().contiguous()) for name, tensor in backend.unwrapped.state_dict().items()]
            gap = ray.get(self.engine.take.remote(share(named), expected if backend.rank == 0 else None, self.tolerance))
            del named
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if backend.rank != 0:
            return None
        ray.get(self.controller.same_device_synced.remote(step, started))
        return gap

    def reset(self) -> None:
        self.engine = None


class DiskSender:
    """The fallback: rank 0 writes output_dir/weights/ (atomically replaced) and every sampler reads
    it; the sampler's probe compares it with a float32 forward of that checkpoint."""

    uses_probe = False

    def __init__(self, controller, output_dir: Path, policy_path: str):
        self.controller, self.output_dir, self.policy_path = controller, output_dir, policy_path

    def send(self, backend, step: int, expected: list[float] | None) -> float | None:
        import ray

        with tempfile.TemporaryDirectory() as tmp:
            save_hf(Path(tmp), backend, self.policy_path)
            if backend.rank != 0:
                return None
            _publish(self.output_dir, Path(tmp))
            return ray.get(self.controller.refresh.remote(str(self.output_dir / WEIGHTS_DIR), step))

    def reset(self) -> None:
        pass


def make_sender(mode: str, controller, output_dir: Path, policy_path: str, run: str, device, join_timeout_s: float, transfer_timeout_s: float,
                probe_tolerance: float):
    if mode == "collective":
        return CollectiveSender(controller, run, device, join_timeout_s, transfer_timeout_s)
    if mode == "object_store":
        return ObjectStoreSender(controller)
    if mode == "same_device":
        return SameDeviceSender(controller, probe_tolerance)
    return DiskSender(controller, output_dir, policy_path)


def _publish(output_dir: Path, model_dir: Path) -> None:
    """Replace weights/ with the model files of `model_dir` (atomic rename)."""
    staging = output_dir / f"{WEIGHTS_DIR}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging, ignore=shutil.ignore_patterns(STATE_DIR))
    previous = output_dir / f"{WEIGHTS_DIR}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if (output_dir / WEIGHTS_DIR).exists():
        (output_dir / WEIGHTS_DIR).rename(previous)
    staging.rename(output_dir / WEIGHTS_DIR)
    shutil.rmtree(previous, ignore_errors=True)
