"""One real local Ray cluster for the whole test session (start-up costs ~4 s)."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from fpa_ray.cluster import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()
