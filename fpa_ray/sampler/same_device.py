"""The colocated layout's weight path: a learner worker's tensors to the engine on its own device.

NCCL refuses a collective between two ranks on one GPU, so, as OpenRLHF and verl do, the worker
hands its engine CUDA IPC handles (torch's `reduce_tensor`): the engine opens the worker's own
device memory and loads from it, with no copy through the host. On CPU the twin hands over one
object-store reference instead: the tensors are written once to the node's shared-memory object
store and read by the engine on the same node. Everything else (the gathered state dict, the
in-place reload, the probe) is shared with the other transports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SharedWeights:
    names: list[str]
    handles: list | None = None  # CUDA: (rebuild function, its arguments) per tensor
    stored: list | None = None  # CPU: [the object ref of the tensors], in a list so that Ray hands the reference over


def share(named: list[tuple[str, torch.Tensor]]) -> SharedWeights:
    """What the engine needs to open `named` (contiguous tensors the caller keeps alive until it has loaded)."""
    names = [name for name, _ in named]
    if named[0][1].is_cuda:
        from torch.multiprocessing.reductions import reduce_tensor

        torch.cuda.synchronize()  # the engine reads them from another process
        return SharedWeights(names, handles=[reduce_tensor(tensor) for _, tensor in named])
    import ray

    return SharedWeights(names, stored=[ray.put([tensor for _, tensor in named])])


def opened(shared: SharedWeights) -> Iterator[tuple[str, torch.Tensor]]:
    """The shared tensors, in this process."""
    if shared.handles is None:
        import ray

        yield from zip(shared.names, ray.get(shared.stored[0]))
        return
    device = torch.cuda.current_device()
    for name, (rebuild, args) in zip(shared.names, shared.handles):
        args = list(args)
        args[6] = device  # the sender's device index; the engine sees the same GPU as its only one
        yield name, rebuild(*args)
