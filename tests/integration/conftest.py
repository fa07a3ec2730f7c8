"""One real local Ray cluster and one small warm-started tiny policy for the whole test session."""

import pytest

from fpa_ray.config import load_config
from tests.helpers.small_run import SMALL


LOGICAL_GPUS = 8  # an 8-GPU node's, so the GPU recipes' pools run here as shipped (tests/integration/test_recipes.py)


@pytest.fixture(scope="session")
def ray_cluster():
    """4 logical CPUs, and 8 logical GPUs that actors may hold while they compute on the CPU: the one
    setting changed for that is fpa_ray.devices.STAND_IN (torch here has no CUDA to move a model to)."""
    import os

    import ray

    from fpa_ray.cluster import init_ray
    from fpa_ray.devices import STAND_IN

    os.environ[STAND_IN] = "1"
    init_ray(num_cpus=4, num_gpus=LOGICAL_GPUS)
    yield ray
    ray.shutdown()


def _pipeline_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "pipeline-cache"


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """The tiny policy after a short SFT: it answers in the task's format, not always right. The
    warm start of small_run.SMALL, in the pipelines' cache: one SFT serves this fixture and every
    pipeline run of the session (offline and GRPO jobs, recipe runs)."""
    from fpa_ray.warmstart import warm_start

    config = load_config("tiny-cpu", SMALL)
    return warm_start(config.policy.tiny, config.policy.sft, config.data.synthetic, seed=config.seed,
                      cache_dir=_pipeline_cache(tmp_path_factory)).path


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    """FPA_RAY_CACHE shared by the pipeline tests: one warm start of small_run.SMALL for all of them."""
    path = _pipeline_cache(tmp_path_factory)
    monkeypatch.setenv("FPA_RAY_CACHE", str(path))
    return path
