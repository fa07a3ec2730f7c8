"""A collective group between the learner's rank 0 and every sampler engine, for weight sync.

The anchors' way (OpenRLHF's `init_process_group` + one broadcast per parameter, TRL's
`init_communicator`, vLLM's own NCCL weight-transfer engine): the learner's rank 0 is rank 0 of
the group, then each engine's workers (one per tensor-parallel rank). One code path; the backend
follows the device: NCCL between GPUs, gloo on CPU. The group is a torch ProcessGroup built on its
own TCPStore, apart from torch.distributed's default group (the learner's DDP / DeepSpeed world)
and from vLLM's own groups, so neither side's world changes. The tensors' names, dtypes and shapes
travel through Ray; the tensors themselves only over the group, streamed into the engine's
layerwise reload one at a time (no full copy of the model is held on the receiving side).

Every transfer waits at most `transfer_timeout_s` for each tensor, then raises RuntimeError and the
caller leaves (aborts) the group: a peer that died or stopped answering fails the sync instead of
blocking it. On NCCL that takes blocking waits (TORCH_NCCL_BLOCKING_WAIT=1 for this group alone): a
plain `wait()` only orders CUDA streams and returns at once, and NCCL's watchdog would end the whole
process after a timed-out collective; with blocking waits the CPU waits, the timeout raises
DistBackendError (a RuntimeError) and no watchdog runs for this group.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

TIMEOUT = timedelta(minutes=10)  # default wait for each tensor of a transfer (grpo.sync_timeout_s)
_GROUPS: dict[str, tuple[object, timedelta]] = {}  # this process's open groups, by name, with their transfer timeout


@dataclass(frozen=True)
class GroupAddress:
    """Where the group meets: rank 0's host and a free port there, and how many ranks it has."""

    name: str
    host: str
    port: int
    world_size: int
    backend: str  # "nccl" or "gloo"
    join_timeout_s: float = TIMEOUT.total_seconds()  # how long each rank waits for the others to join
    transfer_timeout_s: float = TIMEOUT.total_seconds()  # how long each rank waits for each tensor


TensorSpec = tuple[str, str, tuple[int, ...]]  # name, dtype name ("float32"), shape


class TransferFailed(RuntimeError):
    """A tensor was not transferred: a peer died, stopped answering, or aborted the group."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def node_address() -> str:
    """This node's address as Ray sees it (loopback on a local cluster)."""
    import ray

    return ray.util.get_node_ip_address()


def new_address(name: str, world_size: int, backend: str, join_timeout_s: float = TIMEOUT.total_seconds(),
                transfer_timeout_s: float = TIMEOUT.total_seconds()) -> GroupAddress:
    """A group to be opened by this process as rank 0, on a port free now on this node."""
    host = node_address()
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return GroupAddress(name, host, port, world_size, backend, join_timeout_s, transfer_timeout_s)


def join(address: GroupAddress, rank: int, host: str) -> None:
    """Open `address` as `rank` from this process (`host`: this process's node address).

    Blocks until every rank has joined; after `address.join_timeout_s` raises DistStoreError."""
    import torch.distributed as dist

    waited, transfer = timedelta(seconds=address.join_timeout_s), timedelta(seconds=address.transfer_timeout_s)
    store = dist.TCPStore(address.host, address.port, address.world_size, is_master=rank == 0, timeout=waited)
    if address.backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = transfer
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        group = dist.ProcessGroupGloo(store, rank, address.world_size, options)
    else:
        from torch.distributed import ProcessGroupNCCL  # only in CUDA builds of torch

        options = ProcessGroupNCCL.Options()
        options._timeout = transfer
        previous = os.environ.get("TORCH_NCCL_BLOCKING_WAIT")
        os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"  # read by the constructor: this group's waits block and raise
        try:
            group = ProcessGroupNCCL(store, rank, address.world_size, options)
        finally:
            if previous is None:
                os.environ.pop("TORCH_NCCL_BLOCKING_WAIT")
            else:
                os.environ["TORCH_NCCL_BLOCKING_WAIT"] = previous
    leave(address.name)
    _GROUPS[address.name] = (group, transfer)


def leave(name: str) -> None:
    """Close the group: NCCL's communicators are aborted (a transfer stuck on a lost peer returns); gloo's go with it."""
    entry = _GROUPS.pop(name, None)
    if entry is not None:
        entry[0].abort()


def _group(name: str) -> tuple[object, timedelta]:
    try:
        return _GROUPS[name]
    except KeyError:
        raise RuntimeError(f"weight group {name!r} is not open in this process") from None


def specs(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    return [(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)) for name, tensor in tensors]


def send(name: str, tensors: Iterable[torch.Tensor], device: torch.device) -> None:
    """Broadcast each tensor from rank 0, in the order of the specs the receivers were given; RuntimeError
    when one is not taken within the group's transfer timeout."""
    group, timeout = _group(name)
    for index, tensor in enumerate(tensors):
        _wait(group.broadcast(tensor.detach().to(device).contiguous(), 0), timeout, name, index)


def receive(name: str, expected: list[TensorSpec], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """The broadcast tensors, one at a time as the consumer asks for them; RuntimeError when one does not
    arrive within the group's transfer timeout."""
    group, timeout = _group(name)
    for index, (tensor_name, dtype, shape) in enumerate(expected):
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        _wait(group.broadcast(tensor, 0), timeout, name, index)
        yield tensor_name, tensor


def _wait(work, timeout: timedelta, name: str, index: int) -> None:
    try:
        work.wait(timeout)
    except RuntimeError as error:  # gloo: timed out / connection closed; NCCL (blocking wait): DistBackendError
        raise TransferFailed(f"weight group {name!r}: tensor {index} not transferred within {timeout.total_seconds():g} s: {error}") from error
