"""Whether a run's pools fit the Ray cluster: checked before any stage starts, so that a config the
cluster cannot hold fails in seconds, naming the pool, instead of waiting for resources that never come.

Offline rounds run their stages one after another, so each pool must fit by itself (the sampler
pool, the verifier pool, the learner group, whose resources also run the reference precompute); the
online GRPO loop holds all three at once. Ray places each actor on one node, so each must fit on a
node of its own; actors are placed largest first on the first node with room, as a packing placement
group would place them; the colocated GRPO layout places each engine in its learner worker's bundle.
A cluster that autoscales (KubeRay's autoscaler) adds nodes on demand:
there `fit_check=warn` logs the shortfall and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from fpa_ray.config import RunConfig
from fpa_ray.grpo_layouts import grpo_layout


class ClusterTooSmall(RuntimeError):
    """A pool of the run cannot be placed on the cluster's nodes."""


@dataclass(frozen=True)
class Pool:
    name: str  # the config section that sizes it
    count: int
    each: dict[str, float]  # Ray resources of one actor or worker

    def describe(self) -> str:
        total = {key: value * self.count for key, value in self.each.items()}
        return f"{self.count} x {_resources(self.each)} = {_resources(total)}"


def _ask(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}


def _resources(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {value:g}" for key, value in values.items()) + "}"


def run_pools(config: RunConfig) -> list[Pool]:
    """The sampler pool, the verifier pool and the learner group, as the config sizes them."""
    sampler, verifier, learner = config.sampler, config.verifier, config.learner
    return [
        Pool("sampler", sampler.num_actors, _ask(sampler.cpus_per_actor, sampler.gpus_per_actor, sampler.resources)),
        Pool("verifier", verifier.num_actors, _ask(verifier.workers_per_actor, 0, verifier.resources)),
        Pool("learner", learner.num_workers, _ask(learner.cpus_per_worker, learner.gpus_per_worker, learner.resources)),
    ]


def held_together(config: RunConfig) -> list[list[Pool]]:
    """Pools grouped by what runs at the same time: all three in the GRPO loop (as its layout places
    them), one by one offline."""
    pools = run_pools(config)
    return [grpo_layout(config.grpo).pools(pools)] if config.objective.name == "grpo" else [[pool] for pool in pools]


POOL_KEYS = {
    "sampler": "sampler.num_actors, cpus_per_actor, gpus_per_actor, resources",
    "verifier": "verifier.num_actors, workers_per_actor, resources",
    "learner": "learner.num_workers, cpus_per_worker, gpus_per_worker, resources",
    "colocated learner": "learner.num_workers, cpus_per_worker + sampler.cpus_per_actor, gpus_per_worker, resources",
}


def shortfall(pools: list[Pool], nodes: list[dict[str, float]]) -> str | None:
    """Why `pools`, held at once, do not fit on `nodes` (each node's total resources); None when they do."""
    free = [dict(node) for node in nodes]
    placed: dict[str, int] = {}
    for pool in sorted(pools, key=lambda p: (-p.each.get("GPU", 0.0), -p.each.get("CPU", 0.0))):
        placed[pool.name] = 0
        for _ in range(pool.count):
            node = next((n for n in free if all(n.get(key, 0.0) >= value - 1e-9 for key, value in pool.each.items())), None)
            if node is None:
                break
            for key, value in pool.each.items():
                node[key] -= value
            placed[pool.name] += 1
        if placed[pool.name] < pool.count:
            others = [p.name for p in pools if p is not pool]
            beside = f", held at the same time as the {' and '.join(others)} pool(s)," if others else ""
            keys = ["CPU", "GPU", *sorted(set(pool.each) - {"CPU", "GPU"})]
            offered = "; ".join(_resources({k: node[k] for k in keys if k in node}) for node in nodes)
            return (f"the {pool.name} pool does not fit the cluster: it asks {pool.describe()} ({POOL_KEYS[pool.name]}){beside} "
                    f"and there is room for {placed[pool.name]} of its {pool.count}; the cluster's {len(nodes)} node(s) offer {offered or 'nothing'}")
    return None


def cluster_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def check_fit(config: RunConfig, nodes: list[dict[str, float]]) -> list[str]:
    """Every pool group that does not fit `nodes`; raises ClusterTooSmall unless config.fit_check is `warn`."""
    problems = [problem for group in held_together(config) if (problem := shortfall(group, nodes))]
    if problems and config.fit_check == "fail":
        raise ClusterTooSmall("the run's pools do not fit the Ray cluster:\n  - " + "\n  - ".join(problems) + "\nLower those settings, "
                              "or run on a cluster that has them (`ray start` on each node, then RAY_ADDRESS or `ray job submit`); "
                              "on an autoscaling cluster set fit_check=warn")
    return problems
