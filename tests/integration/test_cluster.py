"""The default local cluster listens on loopback only."""

import pytest

pytestmark = pytest.mark.slow


def test_local_cluster_binds_to_loopback_only(ray_cluster):
    assert {node["NodeManagerAddress"] for node in ray_cluster.nodes()} == {"127.0.0.1"}
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")

    @ray_cluster.remote
    def worker_address():
        import ray

        return ray.util.get_node_ip_address()

    assert ray_cluster.get(worker_address.remote()) == "127.0.0.1"
    assert ray_cluster.cluster_resources()["CPU"] == 4
