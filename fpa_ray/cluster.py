"""Starting or joining the Ray cluster a run uses.

With RAY_ADDRESS set (as `ray job submit` does) or an address given, join that cluster. Otherwise
start a local one bound to 127.0.0.1 only. The environment defaults below are what Ray 2.60 needs
on a single machine (see ENVIRONMENT.md): loopback binding, no token auth for a private local
cluster, no usage reporting. Explicit settings in the environment win.
"""

from __future__ import annotations

import os

LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # with the loopback node address, keeps Ray off eth0
    "RAY_AUTH_MODE": "disabled",  # a local cluster only listens on 127.0.0.1; see the README for shared clusters
    "RAY_USAGE_STATS_ENABLED": "0",
}


def init_ray(num_cpus: int | None = 4, address: str | None = None) -> None:
    """Join `address` / $RAY_ADDRESS, or start a loopback-only local cluster with `num_cpus` logical CPUs.

    Four logical CPUs on a 2-core machine: with two, a 2-worker Ray Train run that ingests a
    Ray Dataset deadlocks (read tasks starve), measured in ENVIRONMENT.md.
    """
    import ray

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=True,  # the state API and the dashboard, on loopback only
            dashboard_host="127.0.0.1",
            log_to_driver=True,
        )
