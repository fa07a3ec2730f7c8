"""A collective group between the learner's rank 0 and every sampler engine, for weight sync.

The anchors' way (OpenRLHF's `init_process_group` + one broadcast per parameter, TRL's
`init_communicator`, vLLM's own NCCL weight-transfer engine): the learner's rank 0 is rank 0 of
the group, then each engine's workers (one per tensor-parallel rank). One code path; the backend
follows the device: NCCL between GPUs, gloo on CPU. The group is a torch ProcessGroup built on its
own TCPStore, apart from torch.distributed's default group (the learner's DDP / DeepSpeed world)
and from vLLM's own groups, so neither side's world changes. The tensors' names, dtypes and shapes
travel through Ray; the tensors themselves only over the group, streamed into the engine's
layerwise reload one at a time (no full copy of the model is held on the receiving side).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

TIMEOUT = timedelta(minutes=10)  # a peer that dies mid-transfer fails the sync after this
_GROUPS: dict[str, object] = {}  # this process's open groups, by name


@dataclass(frozen=True)
class GroupAddress:
    """Where the group meets: rank 0's host and a free port there, and how many ranks it has."""

    name: str
    host: str
    port: int
    world_size: int
    backend: str  # "nccl" or "gloo"
    join_timeout_s: float = TIMEOUT.total_seconds()  # how long each rank waits for the others to join


TensorSpec = tuple[str, str, tuple[int, ...]]  # name, dtype name ("float32"), shape


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def node_address() -> str:
    """This node's address as Ray sees it (loopback on a local cluster)."""
    import ray

    return ray.util.get_node_ip_address()


def new_address(name: str, world_size: int, backend: str, join_timeout_s: float = TIMEOUT.total_seconds()) -> GroupAddress:
    """A group to be opened by this process as rank 0, on a port free now on this node."""
    host = node_address()
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return GroupAddress(name, host, port, world_size, backend, join_timeout_s)


def join(address: GroupAddress, rank: int, host: str) -> None:
    """Open `address` as `rank` from this process (`host`: this process's node address).

    Blocks until every rank has joined; after `address.join_timeout_s` raises DistStoreError."""
    import torch.distributed as dist

    waited = timedelta(seconds=address.join_timeout_s)
    store = dist.TCPStore(address.host, address.port, address.world_size, is_master=rank == 0, timeout=waited)
    if address.backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = TIMEOUT
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        group = dist.ProcessGroupGloo(store, rank, address.world_size, options)
    else:
        from torch.distributed import ProcessGroupNCCL  # only in CUDA builds of torch

        options = ProcessGroupNCCL.Options()
        options._timeout = TIMEOUT
        group = ProcessGroupNCCL(store, rank, address.world_size, options)
    leave(address.name)
    _GROUPS[address.name] = group


def leave(name: str) -> None:
    _GROUPS.pop(name, None)


def _group(name: str):
    try:
        return _GROUPS[name]
    except KeyError:
        raise RuntimeError(f"weight group {name!r} is not open in this process") from None


def specs(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    return [(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)) for name, tensor in tensors]


def send(name: str, tensors: Iterable[torch.Tensor], device: torch.device) -> None:
    """Broadcast each tensor from rank 0, in the order of the specs the receivers were given."""
    group = _group(name)
    for tensor in tensors:
        group.broadcast(tensor.detach().to(device).contiguous(), 0).wait()


def receive(name: str, expected: list[TensorSpec], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """The broadcast tensors, one at a time as the consumer asks for them."""
    group = _group(name)
    for tensor_name, dtype, shape in expected:
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        group.broadcast(tensor, 0).wait()
        yield tensor_name, tensor
