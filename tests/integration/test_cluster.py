"""The default local cluster listens on loopback only, and keeps actors' output in its log files."""

import time

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


def test_actor_output_stays_off_the_console_and_in_the_run_directorys_log_link(ray_cluster, tmp_path, capfd):
    from fpa_ray.cluster import link_logs

    @ray_cluster.remote
    class Chatty:
        def speak(self):
            import os
            import sys

            print("a library's chatter", file=sys.stderr, flush=True)
            return os.getpid()

    actor = Chatty.remote()
    pid = ray_cluster.get(actor.speak.remote())
    link = link_logs(tmp_path)
    assert link == tmp_path / "ray-logs" and link.is_symlink() and (link / "raylet.out").exists()
    assert link_logs(tmp_path) == link  # a rerun replaces the link
    deadline = time.time() + 20
    while not any("a library's chatter" in f.read_text(errors="replace") for f in link.glob(f"worker-*-{pid}.err")):
        assert time.time() < deadline, "the actor's stderr is not in the session logs"
        time.sleep(0.2)
    ray_cluster.kill(actor)
    assert "a library's chatter" not in capfd.readouterr().err  # not streamed to the driver's console
