"""One real local Ray cluster and one small warm-started tiny policy for the whole test session."""

import pytest

from fpa_ray.config import SFTConfig, SyntheticTaskConfig, TinyModelConfig


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from fpa_ray.cluster import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """The tiny policy after a short SFT (~15 s): it answers in the task's format, not always right."""
    from fpa_ray.warmstart import warm_start

    sft = SFTConfig(steps=150, batch_size=32, warmup_steps=20, train_problems=2000, tokenizer_problems=1000,
                    eval_problems=20, eval_samples=1, max_new_tokens=48)
    result = warm_start(TinyModelConfig(), sft, SyntheticTaskConfig(), seed=0, cache_dir=tmp_path_factory.mktemp("cache"))
    return result.path


@pytest.fixture()
def cache(tmp_path_factory, monkeypatch):
    """FPA_RAY_CACHE shared by the pipeline tests: one warm start of small_run.SMALL for all of them."""
    path = tmp_path_factory.getbasetemp() / "pipeline-cache"
    monkeypatch.setenv("FPA_RAY_CACHE", str(path))
    return path
