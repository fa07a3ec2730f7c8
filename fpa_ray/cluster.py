"""Starting or joining the Ray cluster a run uses.

With RAY_ADDRESS set (as `ray job submit` does) or an address given, join that cluster and change
nothing about networking. Otherwise start a local cluster bound to 127.0.0.1 only, with what Ray
2.60 needs on a single machine: loopback binding, no token auth for a private
local cluster, no usage reporting. Explicit settings in the environment win.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOCAL_RAY_ENV = {
    # Read by Ray when it is imported; with it off, Ray silently binds the eth0 address even when
    # told 127.0.0.1. Only for a local cluster: a driver joining a multi-node cluster needs its real IP.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",  # the local cluster listens on 127.0.0.1 only; see the README for shared clusters
    "RAY_USAGE_STATS_ENABLED": "0",
}


MIN_LOCAL_CPUS = 4


def init_ray(num_cpus: int | None = None, address: str | None = None, num_gpus: int | None = None) -> None:
    """Join `address` / $RAY_ADDRESS, or start a loopback-only local cluster of this machine.

    The local cluster has `num_cpus` logical CPUs (default: the machine's, at least four) and
    `num_gpus` GPUs (default: those Ray detects), so a bare GPU node runs the GPU recipes as it is.
    At least four logical CPUs even on a 2-core machine: with two, a 2-worker Ray Train run that
    ingests a Ray Dataset deadlocks (its read tasks starve).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=True)
        _quiet_ray_data()
        return
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    already_imported = "ray" in sys.modules
    import ray

    if already_imported and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        # Ray read the variable at its import, before we could set it.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    _quiet_ray_data()
    if ray.is_initialized():
        return
    # The console keeps the driver's own progress and results; what actors and the libraries in them
    # print (vLLM's and Ray Train's INFO/WARNING lines, per-step reports) stays in the session's
    # log files, which each run links as <run>/ray-logs (`link_logs`). A joined cluster (`ray job
    # submit`) keeps Ray's default of streaming it into the job's logs.
    ray.init(
        num_cpus=num_cpus if num_cpus is not None else max(MIN_LOCAL_CPUS, os.cpu_count() or 1),
        num_gpus=num_gpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=True,  # the state API and the dashboard, on loopback only
        dashboard_host="127.0.0.1",
        log_to_driver=False,
    )


def link_logs(run_dir: Path) -> Path | None:
    """`<run_dir>/ray-logs` -> the local Ray session's logs (every actor's stdout and stderr); None
    when this process did not start the cluster it uses (its logs are on the cluster's nodes)."""
    from ray._private import worker

    node = worker._global_node
    if node is None or not node.head:  # joined a cluster started elsewhere
        return None
    link = run_dir / "ray-logs"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(node.get_logs_dir_path(), target_is_directory=True)
    return link


def _quiet_ray_data() -> None:
    """Keep the stages' own progress lines readable: Ray Data's per-operator progress bars and
    execution-plan INFO lines would otherwise fill the log several times per second."""
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # only "progress bars disabled", which is this
