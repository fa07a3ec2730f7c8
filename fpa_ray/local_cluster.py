"""A Ray cluster of several nodes on one machine, loopback only: a head and worker nodes, each with
its own logical CPUs, object store and a custom resource naming its role (`sampler_node`,
`learner_node`, `verifier_node`), so the pools are placed across nodes the way a real cluster
places them (`sampler.resources={sampler_node: 1}` and so on).

    make cluster   # = unshare -n sh -c 'ip link set lo up && python -m fpa_ray.local_cluster start && bash; ... stop'

Only inside a network namespace of its own whose one interface is the loopback (`unshare -n`, as
root): Ray 2.60 refuses a second node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what keeps a
one-node cluster on 127.0.0.1), and with it set to 1 the raylets listen on every interface and
reach the GCS over the machine's own network address even when every node is told 127.0.0.1
(measured: eth0's address). In a namespace with only `lo` there is nothing else to reach, so
`start` refuses to run anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from fpa_ray.cluster import LOCAL_RAY_ENV

DEFAULT_TEMP_DIR = "/tmp/fpa-cluster"  # short: Ray's socket paths must fit in 107 bytes
OBJECT_STORE_BYTES = 200 * 1024**2
# The GCS declares a node dead after this many missed health checks, one a second (Ray's default:
# 5 every 3 s): a lost node's actors are restarted elsewhere within ~5 s.
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
WORKER_PORTS = 20000  # node k's workers listen on 20000 + 100 k ... + 99


@dataclass(frozen=True)
class NodeSpec:
    role: str  # "head" or the custom resource's prefix: sampler -> sampler_node
    cpus: int
    object_store_bytes: int = OBJECT_STORE_BYTES

    @property
    def resource(self) -> str:
        return f"{self.role}_node"


# The drivers on the head, which offers no CPUs (as KubeRay advises: work never lands on the node
# whose loss ends the cluster); each pool on a node of its own, with the CPUs
# it asks for in tests/integration's small runs (a learner of 2 workers x 1 CPU; one sampler actor
# and one verifier actor, plus what Ray Data runs beside them).
DEFAULT_NODES = (NodeSpec("head", 0), NodeSpec("sampler", 2), NodeSpec("verifier", 2), NodeSpec("learner", 2))


@dataclass
class LocalCluster:
    temp_dir: str
    address: str  # host:port of the GCS, for `ray start --address` and RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:port, for `ray job submit --address`
    nodes: tuple[NodeSpec, ...]
    env: dict[str, str]
    started: int = 0  # nodes started so far, replacements included: each takes the next worker port range


def _node_args(spec: NodeSpec, index: int) -> list[str]:
    """`ray start` flags of node `index`: 127.0.0.1, its CPUs, role resource and object store, ports of
    its own (Ray's defaults for the dashboard agent collide between two nodes of one machine) and
    a worker port range of its own."""
    low = WORKER_PORTS + 100 * index
    return [
        "--node-ip-address=127.0.0.1", f"--num-cpus={spec.cpus}", f"--resources={json.dumps({spec.resource: spec.cpus})}",
        f"--object-store-memory={spec.object_store_bytes}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--min-worker-port={low}", f"--max-worker-port={low + 99}",
    ]


def start(nodes: tuple[NodeSpec, ...] = DEFAULT_NODES, temp_dir: str = DEFAULT_TEMP_DIR, timeout_s: float = 120,
          env: dict[str, str] | None = None) -> LocalCluster:
    """Start the head (`nodes[0]`) and the worker nodes and wait until all have joined. `env` is
    added to every node's environment (what jobs' drivers and actors inherit)."""
    interfaces = sorted(psutil.net_if_addrs())
    if interfaces != ["lo"]:
        raise RuntimeError(f"a multi-node local cluster runs only in a network namespace whose one interface is lo (unshare -n); "
                           f"this one has {', '.join(interfaces)}")
    env = {**os.environ, **LOCAL_RAY_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", **HEALTH_CHECKS, **(env or {})}
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    cluster = LocalCluster(temp_dir, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", nodes, env)
    cluster.started = len(nodes)
    _ray_start(["--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats", *_node_args(nodes[0], 0)],
               env, timeout_s)
    try:
        for index, spec in enumerate(nodes[1:], start=1):
            _ray_start(["--address", cluster.address, *_node_args(spec, index)], env, timeout_s)
        wait_for_nodes(cluster, len(nodes), timeout_s)
    except BaseException:
        stop(temp_dir)
        raise
    return cluster


def state(cluster: LocalCluster, kind: str) -> list[dict]:
    """The dashboard's state API: `nodes`, `actors`, `tasks`... (dead ones included), [] while it is not up."""
    try:
        with urllib.request.urlopen(f"{cluster.dashboard}/api/v0/{kind}?limit=10000&detail=true", timeout=30) as response:
            return json.loads(response.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return []


def alive_nodes(cluster: LocalCluster) -> list[dict]:
    return [n for n in state(cluster, "nodes") if n.get("state") == "ALIVE"]


def wait_for_nodes(cluster: LocalCluster, count: int, timeout_s: float = 120) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        alive = alive_nodes(cluster)
        if len(alive) == count:
            return alive
        if time.time() > deadline:
            raise TimeoutError(f"{len(alive)} of {count} nodes alive after {timeout_s:.0f} s")
        time.sleep(1)


def raylet(node_id: str) -> psutil.Process:
    """The raylet process of node `node_id` (its scheduler and object store): what dies with a node."""
    for process in psutil.process_iter(["cmdline"]):
        if f"--node_id={node_id}" in (process.info["cmdline"] or [])[1:]:
            return process
    raise LookupError(f"no raylet of node {node_id} runs on this machine")


@dataclass(frozen=True)
class WorkerNode:
    """A worker node found ahead of its loss: what `kill_node` needs without asking the cluster again."""

    node_id: str
    spec: NodeSpec
    raylet: psutil.Process


def worker_node(cluster: LocalCluster, node_id: str) -> WorkerNode:
    node = next(n for n in state(cluster, "nodes") if n["node_id"] == node_id)
    if node["is_head_node"]:
        raise ValueError("the head holds the GCS and the drivers: losing it ends the cluster, not a test of a lost node")
    return WorkerNode(node_id, next(s for s in cluster.nodes if s.resource in node["resources_total"]), raylet(node_id))


def kill_node(cluster: LocalCluster, node: WorkerNode, timeout_s: float = 60) -> None:
    """SIGKILL every process of a worker node at once (its raylet and what the raylet started: the
    workers, the agents) and wait until the GCS has declared the node dead; `add_node(cluster,
    node.spec)` starts a replacement. The raylet alone is not a lost node: its workers ran on for
    seconds after it (long enough to finish a train stage) until they noticed."""
    processes = [node.raylet, *node.raylet.children(recursive=True)]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.time() + timeout_s
    while not any(n["node_id"] == node.node_id and n["state"] == "DEAD" for n in state(cluster, "nodes")):
        if time.time() > deadline:
            raise TimeoutError(f"node {node.node_id} not declared dead {timeout_s:.0f} s after its processes were killed")
        time.sleep(0.5)


def add_node(cluster: LocalCluster, spec: NodeSpec, timeout_s: float = 120) -> None:
    """Start one more worker node (a replacement for a lost one, as KubeRay starts a new pod)."""
    _ray_start(["--address", cluster.address, *_node_args(spec, cluster.started)], cluster.env, timeout_s)
    cluster.started += 1


def stop(temp_dir: str = DEFAULT_TEMP_DIR) -> int:
    """Kill every process of the cluster under `temp_dir` (and only those: `ray stop` would stop
    every Ray cluster on the machine, a test session's own included); returns how many."""
    victims = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in part for part in (p.info["cmdline"] or []))]
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    return len(victims)


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _ray_start(args: list[str], env: dict[str, str], timeout_s: float) -> None:
    done = subprocess.run([_ray(), "start", *args], env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--temp-dir", default=DEFAULT_TEMP_DIR)
    args = parser.parse_args(argv)
    if args.action == "stop":
        print(f"stopped {stop(args.temp_dir)} processes")
        return 0
    cluster = start(temp_dir=args.temp_dir)
    roles = ", ".join(f"{n.role} ({n.cpus} CPUs, resource {n.resource})" for n in cluster.nodes)
    print(f"nodes: {roles}\nRAY_ADDRESS={cluster.address}\ndashboard: {cluster.dashboard}\n"
          f"ray job submit --address {cluster.dashboard} -- python -m fpa_ray.main run sampler.resources='{{sampler_node: 1}}' "
          "verifier.resources='{verifier_node: 1}' learner.resources='{learner_node: 1}'\n"
          f"stop: python -m fpa_ray.local_cluster stop --temp-dir {args.temp_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
