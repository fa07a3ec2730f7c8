"""The run ledger: every stage is charged the resources it held times its wall time, and the whole
cluster's hosts times its wall time.

One JSON line per stage run in `<run>/ledger.jsonl`: stage, round, start and end (UNIX seconds),
wall seconds, CPUs and GPUs the stage held, cpu_seconds = CPUs x wall, gpu_seconds = GPUs x wall,
the cluster the job held meanwhile (`cluster`: hosts, CPUs, GPUs) and node_seconds = hosts x wall,
and the node. node-hours are the cost basis runs are compared on: a job holds its cluster whether
a stage uses all of it or not (a user renting the machines pays for all of them), so a method that
leaves devices idle is charged for them. A host is one machine: the distinct addresses of the
cluster's alive nodes (a local cluster of several Ray nodes on one machine is one host; on KubeRay,
one pod). CPU- and GPU-hours, what each stage used, stay beside it. Offline and online pipelines
charge through this one class, so they compare like for like.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fpa_ray import metrics


# Stages that are not training: the shared starting point and the measurement of each policy.
NOT_TRAINING = frozenset({"warmstart", "download", "eval_generate", "eval_verify"})


def cluster_held() -> dict[str, float]:
    """The cluster this process's job holds: hosts, CPUs and GPUs of its alive nodes (outside Ray: this machine)."""
    import ray

    if not ray.is_initialized():
        return {"hosts": 1, "cpus": float(os.cpu_count() or 1), "gpus": 0.0}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"hosts": len({n["NodeManagerAddress"] for n in nodes}) or 1,
            "cpus": sum(n["Resources"].get("CPU", 0.0) for n in nodes), "gpus": sum(n["Resources"].get("GPU", 0.0) for n in nodes)}


COSTS = ("node_seconds", "cpu_seconds", "gpu_seconds")


class Ledger:
    def __init__(self, path: Path, run: str | None = None, held: Callable[[], dict[str, float]] = cluster_held):
        """`held`: what the job holds while a stage runs (cluster_held; a test passes its own)."""
        self.path, self.run, self.held = path, run or path.parent.name, held

    @contextmanager
    def stage(self, stage: str, round_index: int | None, cpus: float, gpus: float = 0.0) -> Iterator[None]:
        """Charge the enclosed block; a block that raises is charged too (the resources were held)."""
        start = time.time()
        ok = False
        metrics.stage_active(self.run, stage, True)
        try:
            yield
            ok = True
        finally:
            metrics.stage_active(self.run, stage, False)
            self.charge(stage, round_index, start, time.time(), cpus, gpus, completed=ok)

    def charge(self, stage: str, round_index, start: float, end: float, cpus: float, gpus: float = 0.0, completed: bool = True,
               samples: int | None = None) -> None:
        """One entry: `cpus` and `gpus` held from `start` to `end` (UNIX seconds); `samples`: how many a
        generate phase made (the online loop's, so that samples its dynamic sampling discards are on record)."""
        cluster = self.held()
        entry = {
            "stage": stage, "round": round_index, "start": start, "end": end, "wall_s": end - start,
            "cpus": cpus, "gpus": gpus, "cpu_seconds": cpus * (end - start), "gpu_seconds": gpus * (end - start),
            "cluster": cluster, "node_seconds": cluster["hosts"] * (end - start),
            "node": platform.node(), "completed": completed, **({} if samples is None else {"samples": samples}),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)  # on the first entry: a run refused before its stages leaves no directory
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        metrics.resource_seconds(self.run, stage, entry["cpu_seconds"], entry["gpu_seconds"])

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def cost_until(self, moment: float, excluded: frozenset[str] = frozenset()) -> dict[str, float]:
        """Node-, CPU- and GPU-seconds charged before `moment` (entries cut at it), stages in `excluded` left out."""
        cost = dict.fromkeys(COSTS, 0.0)
        for entry in self.entries():
            if entry["stage"] in excluded or entry["start"] >= moment:
                continue
            share = (min(entry["end"], moment) - entry["start"]) / entry["wall_s"] if entry["wall_s"] > 0 else 1.0
            for key in COSTS:
                cost[key] += entry[key] * share
        return cost

    def totals(self) -> dict[str, dict[str, float]]:
        """wall, node, CPU and GPU seconds per stage name."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(("wall_s", *COSTS), 0.0))
        for entry in self.entries():
            for key in ("wall_s", *COSTS):
                totals[entry["stage"]][key] += entry[key]
        return dict(totals)
