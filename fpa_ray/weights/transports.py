"""How the learner's new weights reach the live sampler engines: one transport per `grpo.weight_sync`.

Each transport owns both ends, as verl's checkpoint engines do. `send(weights, step, expected)`
runs on every learner rank after an update with what leaves the learner (`weights`: every tensor by
name, or with LoRA the adapters alone; ZeRO-3 gathers them on every rank; the probe's forward, which
gives `expected`, runs on every rank), returns the probe's gap on rank 0 (None elsewhere) and counts
the bytes it sent (`sent_bytes`). `receive(engine, payload, expected, tolerance, merge)` runs in a
sampler actor on its engine's thread: it loads the weights into the live engine in place (the same
process and engine object, no restart), adapters merged into the engine's start weights first
(`merge`: adapters.py), and, given `expected`, checks them (probe.py). Between the two the rollout controller `deliver`s the
payload to every sampler actor (the probe on the first) and charges the sync. When a sampler actor
dies the pools restart on the start's weights: a `replayable` transport's last payload is handed
to them again by the controller alone; for the others only the learner holds the weights, so the
next rollout asks it to send again (`resync`).

- `collective`: rank 0 and every sampler worker form a process group (group.py: NCCL on GPUs,
  gloo on CPU), opened on the first send and again after the pools restarted; one broadcast per
  tensor, streamed into the engine's layerwise reload.
- `object_store`: rank 0 puts the full state dict in the Ray object store; the payload is its
  reference, which the controller keeps (replayable).
- `disk`: rank 0 writes output_dir/weights/ (atomically replaced) and every sampler reads it
  (replayable; the fallback).
- `same_device` (the colocated layout): every rank hands the engine on its own device CUDA IPC
  handles to its gathered tensors (NCCL refuses two ranks of one GPU), or on CPU one object-store
  reference (the node's shared memory): the twin shares everything but the handle exchange.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fpa_ray.weights import group as weight_group
from fpa_ray.weights.adapters import AdapterMerge, read_tensors
from fpa_ray.weights.probe import checked

WEIGHTS_DIR = "weights"  # the latest policy, what the samplers load with weight_sync=disk


class Collective:
    name = "collective"
    replayable = False

    def __init__(self, controller, run: str, device, join_timeout_s: float, transfer_timeout_s: float):
        self.controller, self.run, self.device = controller, run, device
        self.join_timeout_s, self.transfer_timeout_s = join_timeout_s, transfer_timeout_s
        self.group = None  # its GroupAddress, on rank 0
        self.opened = 0
        self.sent_bytes = None  # of the last send, on rank 0

    def _open(self) -> bool:
        """Open a new group with every sampler; False when a sampler was lost before it joined (the
        controller then restarted the pools): a wait of its own would last until the join timeout."""
        import ray
        import torch.distributed as dist

        world = 1 + ray.get(self.controller.weight_group_ranks.remote())
        self.opened += 1
        address = weight_group.new_address(f"{self.run}-weights-{self.opened}", world, weight_group.backend_for(self.device),
                                           self.join_timeout_s, self.transfer_timeout_s)
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

    def send(self, weights, step: int, expected: list[float] | None) -> float | None:
        import ray

        with weights.gathered():
            if weights.rank != 0:
                return None
            state = dict(weights.named())
            self.sent_bytes = nbytes(state.values())
            for _ in range(2):  # a sampler lost while joining or mid-broadcast: the pool restarts, and one more try on a new group
                if self.group is None and not self._open():
                    continue
                reply = self.controller.deliver.remote(self.name, (self.group.name, weight_group.specs(state.items())), step, expected)
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
            weight_group.leave(self.group.name)
        self.group = None

    @staticmethod
    def receive(engine, payload: tuple[str, list], expected: list[float] | None, tolerance: float, merge: AdapterMerge | None = None) -> float | None:
        group, specs = payload
        engine.receive_weights(group, specs, merge)
        return checked(engine, expected, tolerance, "the learner's broadcast weights")


class ObjectStore:
    name = "object_store"
    replayable = True

    def __init__(self, controller):
        self.controller = controller
        self.sent_bytes = None

    def send(self, weights, step: int, expected: list[float] | None) -> float | None:
        import ray

        with weights.gathered():  # put while gathered: ZeRO-3 frees the full tensors on leaving
            if weights.rank != 0:
                return None
            state = {name: tensor.detach().cpu() for name, tensor in weights.named()}
            self.sent_bytes, stored = nbytes(state.values()), ray.put(state)
        # The reference in a list, so that Ray hands it over instead of the tensors; the receiver resolves it.
        return ray.get(self.controller.deliver.remote(self.name, [stored], step, expected))["gap"]

    def reset(self) -> None:
        pass

    @staticmethod
    def receive(engine, payload: list, expected: list[float] | None, tolerance: float, merge: AdapterMerge | None = None) -> float | None:
        import ray

        engine.update_weights(ray.get(payload[0]).items(), merge)
        return checked(engine, expected, tolerance, "the learner's weights")


class Disk:
    name = "disk"
    replayable = True

    def __init__(self, controller, output_dir: Path):
        self.controller, self.output_dir = controller, output_dir
        self.sent_bytes = None

    def send(self, weights, step: int, expected: list[float] | None) -> float | None:
        import ray

        with tempfile.TemporaryDirectory() as tmp:
            weights.save(Path(tmp))  # a Hugging Face model directory, or the adapters' tensors (every rank calls it)
            if weights.rank != 0:
                return None
            self.sent_bytes = sum(path.stat().st_size for path in Path(tmp).rglob("*") if path.is_file())
            _publish(self.output_dir, Path(tmp))
        return ray.get(self.controller.deliver.remote(self.name, str(self.output_dir / WEIGHTS_DIR), step, expected))["gap"]

    def reset(self) -> None:
        pass

    @staticmethod
    def receive(engine, payload: str, expected: list[float] | None, tolerance: float, merge: AdapterMerge | None = None) -> float | None:
        if merge is None:
            engine.load_weights(Path(payload))
        else:
            engine.update_weights(read_tensors(Path(payload)), merge)
        return checked(engine, expected, tolerance, payload)


@dataclass(frozen=True)
class SharedWeights:
    names: list[str]
    handles: list | None = None  # CUDA: (rebuild function, its arguments) per tensor
    gpu: str | None = None  # CUDA: the GPU's UUID, which the engine must see as its own
    stored: list | None = None  # CPU: [the object ref of the tensors], in a list so that Ray hands the reference over


def share(named: list[tuple[str, torch.Tensor]]) -> SharedWeights:
    """What the engine on the same device needs to open `named` (contiguous tensors the caller keeps
    alive until the engine has loaded them)."""
    names = [name for name, _ in named]
    if named[0][1].is_cuda:
        from torch.multiprocessing.reductions import reduce_tensor

        torch.cuda.synchronize()  # the engine reads them from another process
        gpu = str(torch.cuda.get_device_properties(named[0][1].device).uuid)
        return SharedWeights(names, handles=[reduce_tensor(tensor) for _, tensor in named], gpu=gpu)
    import ray

    return SharedWeights(names, stored=[ray.put([tensor for _, tensor in named])])


def opened(shared: SharedWeights) -> Iterator[tuple[str, torch.Tensor]]:
    """The shared tensors, in the engine's process."""
    if shared.handles is None:
        import ray

        yield from zip(shared.names, ray.get(shared.stored[0]))
        return
    device = torch.cuda.current_device()
    ours = str(torch.cuda.get_device_properties(device).uuid)
    if ours != shared.gpu:  # else the handles would open another GPU's memory over peer access, silently
        raise RuntimeError(f"the learner worker's weights are on GPU {shared.gpu}, this engine is on {ours}: not colocated")
    for name, (rebuild, args) in zip(shared.names, shared.handles):
        args = list(args)
        args[6] = device  # the sender's device index; the engine sees the same GPU as its only one
        yield name, rebuild(*args)


class SameDevice:
    name = "same_device"
    replayable = False

    def __init__(self, controller, tolerance: float):
        self.controller, self.tolerance = controller, tolerance
        self.engine = None  # this rank's engine
        self.sent_bytes = None  # handed to this rank's engine, each rank

    def send(self, weights, step: int, expected: list[float] | None) -> float | None:
        import ray
        import torch.distributed as dist

        started = time.time()
        if self.engine is None:
            self.engine = ray.get(self.controller.engines.remote())[weights.rank]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the memory training cached goes back to the device: the engine wakes into it
        with weights.gathered():  # ZeRO-3: the full tensors on every rank, until every engine has loaded them
            named = [(name, tensor.detach().contiguous()) for name, tensor in weights.named()]
            self.sent_bytes = nbytes(tensor for _, tensor in named)
            ray.get(self.engine.load.remote(self.name, share(named), None, self.tolerance))  # its weights awake, not its KV cache
            del named
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if torch.cuda.is_available():  # the gathered copy back to the device before the engines' KV caches wake into it
            torch.cuda.ipc_collect()
            torch.cuda.empty_cache()
        if weights.rank != 0:
            return None
        gap = None if expected is None else ray.get(self.engine.check.remote(expected, self.tolerance))
        ray.get(self.controller.delivered.remote(step, started))
        return gap

    def reset(self) -> None:
        self.engine = None  # the engines restarted: look this rank's up again

    @staticmethod
    def receive(engine, payload: SharedWeights, expected: list[float] | None, tolerance: float, merge: AdapterMerge | None = None) -> float | None:
        engine.update_weights(opened(payload), merge)
        return checked(engine, expected, tolerance, "the learner worker's weights on this device")


TRANSPORTS = {transport.name: transport for transport in (Collective, ObjectStore, Disk, SameDevice)}


def make_transport(grpo, controller, output_dir: Path, run: str, device):
    """The learner's end of `grpo.weight_sync`."""
    if grpo.weight_sync == "collective":
        return Collective(controller, run, device, grpo.sync_join_timeout_s, grpo.sync_timeout_s)
    if grpo.weight_sync == "object_store":
        return ObjectStore(controller)
    if grpo.weight_sync == "same_device":
        return SameDevice(controller, grpo.probe_tolerance)
    return Disk(controller, output_dir)


def nbytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _publish(output_dir: Path, model_dir: Path) -> None:
    """Replace weights/ with `model_dir` (atomic rename)."""
    staging = output_dir / f"{WEIGHTS_DIR}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    previous = output_dir / f"{WEIGHTS_DIR}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if (output_dir / WEIGHTS_DIR).exists():
        (output_dir / WEIGHTS_DIR).rename(previous)
    staging.rename(output_dir / WEIGHTS_DIR)
    shutil.rmtree(previous, ignore_errors=True)
