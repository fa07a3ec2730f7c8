"""Devices for actors holding GPUs: CUDA, the CPU stand-in, and an error naming the actor otherwise;
tensors handed to NCCL collectives live on the actor's device."""

import pytest
import torch

from fpa_ray.config import LearnerConfig, SamplerConfig
from fpa_ray.devices import STAND_IN, collective_backend, compute_device


@pytest.fixture()
def no_stand_in(monkeypatch):
    monkeypatch.delenv(STAND_IN, raising=False)  # the integration session sets it for its logical GPUs


def test_an_actor_without_gpus_computes_on_the_cpu_over_gloo(no_stand_in):
    assert compute_device(0, "x") == torch.device("cpu") and collective_backend(0) == "gloo"


def test_an_actor_holding_a_gpu_that_torch_cannot_see_fails_naming_it(no_stand_in):
    assert not torch.cuda.is_available()
    with pytest.raises(RuntimeError, match=f"the learner worker holds 1 GPU.* sees no CUDA device.*{STAND_IN}=1"):
        compute_device(1, "the learner worker")
    assert collective_backend(1) == "nccl"


def test_with_the_stand_in_gpu_holders_compute_on_the_cpu_over_gloo(monkeypatch):
    monkeypatch.setenv(STAND_IN, "1")
    assert compute_device(1, "x") == torch.device("cpu") and collective_backend(0.5) == "gloo"
    from fpa_ray.learner.worker_group import worker_env
    from fpa_ray.sampler.stage import actor_env

    assert worker_env(LearnerConfig(gpus_per_worker=1))[STAND_IN] == "1" == actor_env(SamplerConfig(gpus_per_actor=1))[STAND_IN]


def test_the_micro_batch_count_is_agreed_on_the_workers_device(monkeypatch):
    """NCCL all-reduces CUDA tensors only: the count travels on the device the learner computes on."""
    import torch.distributed as dist

    from fpa_ray.learner import optimizer_step

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: seen.append(tensor.device))
    with pytest.raises(RuntimeError, match="meta tensors"):  # reading a meta tensor's value: after the all-reduce
        optimizer_step._max_over_workers(3, torch.device("meta"))
    assert seen == [torch.device("meta")]


def test_tensor_parallel_engines_hold_one_gpu_per_rank():
    assert SamplerConfig(tensor_parallel_size=2, gpus_per_actor=2).tensor_parallel_size == 2
    assert SamplerConfig(gpus_per_actor=0.5).gpus_per_actor == 0.5  # TP 1: engines may share a GPU
    for gpus in (1, 0, 2.5):
        with pytest.raises(ValueError, match="tensor_parallel_size=2 shards each engine over 2 GPUs of its actor: set gpus_per_actor=2"):
            SamplerConfig(tensor_parallel_size=2, gpus_per_actor=gpus)
