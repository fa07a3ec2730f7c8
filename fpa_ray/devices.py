"""Which torch device a pool's actor computes on, and the CPU stand-in for GPUs.

An actor or worker that holds GPUs computes on CUDA, and its collectives run over NCCL. A Ray
cluster on a machine without GPUs can still declare logical ones (`ray start --num-gpus 8`,
`ray.init(num_gpus=8)`), which runs every resource path of the GPU recipes (Ray Data pools and Ray
Train workers asking for GPUs, placement, the fit check) while the models compute on the CPU: that
takes FPA_RAY_CPU_STANDS_IN_FOR_GPUS=1 in the driver's environment (the pools' actors get it from
the driver). Without it, an actor holding a GPU that torch cannot see fails, naming what it holds,
instead of training a 7B model on the CPU.
"""

from __future__ import annotations

import os

import torch

STAND_IN = "FPA_RAY_CPU_STANDS_IN_FOR_GPUS"


def cpu_stands_in() -> bool:
    """True when GPUs held by actors are logical ones and the work runs on the CPU (tests, CPU machines)."""
    return os.environ.get(STAND_IN) == "1"


def stand_in_env() -> dict[str, str]:
    """What an actor's runtime_env carries so that it makes the driver's choice."""
    return {STAND_IN: "1"} if cpu_stands_in() else {}


def compute_device(gpus: float, what: str) -> torch.device:
    """The device of an actor holding `gpus` GPUs (`what` names it in the error): CUDA, or the CPU
    when it holds none or the CPU stands in."""
    if gpus == 0 or cpu_stands_in():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{what} holds {gpus:g} GPU(s) but torch {torch.__version__} sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): install the `gpu` extra's CUDA build of torch, "
            f"or set {STAND_IN}=1 to run the GPU settings on the CPU"
        )
    return torch.device("cuda", torch.cuda.current_device())


def collective_backend(gpus: float) -> str:
    """torch.distributed's backend for a group of actors holding `gpus` GPUs each."""
    return "nccl" if gpus > 0 and not cpu_stands_in() else "gloo"
