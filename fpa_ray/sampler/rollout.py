"""The sampler pool as long-lived actors, for the online loop: sample on demand, new weights in place.

The offline generate stage starts its engines per stage (Ray Data actor pool) and lets them go;
the online loop keeps `num_actors` engines alive for the whole run and loads each new policy into
them (`load`, through one of fpa_ray.weights.transports), checked by the log-prob probe. Same
engines, same per-sample seeds, same output rows as the generate stage. In the colocated layout
each engine sits on a learner worker's device: it sleeps while the worker trains and wakes for the
worker's next weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from fpa_ray.config import SamplerConfig
from fpa_ray.data.sources import PromptRow
from fpa_ray.sampler.stage import SamplerActor, actor_env, on_engine_thread
from fpa_ray.weights.adapters import AdapterMerge
from fpa_ray.weights.probe import checked, probe_gap
from fpa_ray.weights.transports import TRANSPORTS


class RolloutWorker(SamplerActor):
    """One engine; `rollout` returns the generate stage's rows instead of writing shards."""

    def __init__(self, checkpoint: str, config: SamplerConfig, template: str, sleep_mode: bool = False, merge: AdapterMerge | None = None):
        """`merge`: the run trains LoRA adapters, which arrive alone and are merged into `checkpoint`'s weights."""
        super().__init__([(str(checkpoint), "", str(checkpoint))], config, template, seed=0, sleep_mode=sleep_mode)
        self.merge = merge
        self.naps: list[list] = []  # [fell asleep, woke] (UNIX seconds) and the resident bytes asleep, of each sleep
        self.woken: list[str] = []  # the parts awake again since the last sleep

    def _wake(self, *parts: str) -> None:
        if not self.naps or self.naps[-1][1] is not None:
            return  # awake
        missing = [part for part in parts if part not in self.woken]
        if missing:
            self.engine.wake_up(missing)
            self.woken += missing
        if set(self.woken) == {"weights", "kv_cache"}:
            self.naps[-1][1] = time.time()

    @on_engine_thread
    def rollout(self, prompts: list[PromptRow], seed: int, policy_id: str) -> pa.Table:
        self._wake("weights", "kv_cache")
        self.seed = seed
        table, _ = self._generate(prompts, policy_id)
        return table

    @on_engine_thread
    def sleep(self) -> None:
        """Release the device's memory until the next weights or rollout (the colocated layout)."""
        import psutil

        if not self.naps or self.naps[-1][1] is not None:
            self.engine.sleep()
            self.naps.append([time.time(), None, psutil.Process().memory_info().rss])
            self.woken = []

    @on_engine_thread
    def naps_taken(self) -> list[list]:
        return self.naps

    @on_engine_thread
    def load(self, transport: str, payload, expected: list[float] | None, tolerance: float) -> float | None:
        """The learner's new weights through `transport` (fpa_ray.weights.transports), loaded in place; with
        `expected`, the learner's probe log-probs, checked (the gap, else None). Where the engine sleeps, its
        weights wake first and, unless the probe samples now, its KV cache with the next rollout or `check`."""
        self._wake(*(("weights",) if expected is None else ("weights", "kv_cache")))
        return TRANSPORTS[transport].receive(self.engine, payload, expected, tolerance, self.merge)

    @on_engine_thread
    def check(self, expected: list[float], tolerance: float) -> float:
        """The probe on the weights loaded last (the same-device transport's, once the learner freed its copy)."""
        self._wake("weights", "kv_cache")
        return checked(self.engine, expected, tolerance, "the learner worker's weights on this device")

    @on_engine_thread
    def join_weight_group(self, address, first_rank: int) -> int:
        """Join the learner's weight group (the collective transport) from this engine's workers; returns how many ranks they take."""
        from fpa_ray.weights.group import node_address

        return self.engine.join_weight_group(address, first_rank, node_address())

    @on_engine_thread
    def engine_identity(self) -> tuple[int, int]:
        """(process id, id of the engine object): what an in-place sync must leave unchanged."""
        import os

        return os.getpid(), id(getattr(self.engine, "llm", self.engine))

    @on_engine_thread
    def gap(self, checkpoint: str) -> float:
        return probe_gap(self.engine, Path(checkpoint))


def start_rollout_workers(checkpoint: Path, config: SamplerConfig, template: str, name_prefix: str, merge: AdapterMerge | None = None) -> list:
    """`config.num_actors` named sampler actors on `checkpoint` (Ray dashboard: `<prefix>-sampler-<i>`); `merge`: see RolloutWorker."""
    import ray

    remote = ray.remote(RolloutWorker)
    return [
        remote.options(
            name=f"{name_prefix}-sampler-{i}",
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor,
            resources=config.resources,
            runtime_env={"env_vars": actor_env(config)},
        ).remote(str(checkpoint), config, template, merge=merge)
        for i in range(config.num_actors)
    ]


def start_colocated_engines(checkpoint: Path, config: SamplerConfig, template: str, name_prefix: str, placements: list,
                            merge: AdapterMerge | None = None) -> list:
    """One sleeping-capable engine in each learner worker's bundle (`placements`: grpo_layouts.WorkerPlacement),
    on the worker's GPUs. It asks Ray for nothing: the bundle's resources, the engine's CPUs included, are held
    by the worker (a GPU cannot be split between two Ray requests of one bundle)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    remote = ray.remote(RolloutWorker)
    engines = []
    for i, placement in enumerate(placements):
        devices = {"CUDA_VISIBLE_DEVICES": ",".join(placement.gpu_ids)} if placement.gpu_ids else {}  # Ray leaves it alone at 0 GPUs
        engines.append(remote.options(
            name=f"{name_prefix}-sampler-{i}", num_cpus=0, num_gpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement.placement_group, placement_group_bundle_index=placement.bundle),
            runtime_env={"env_vars": {**actor_env(config), **devices}},
        ).remote(str(checkpoint), config, template, sleep_mode=True, merge=merge))
    return engines
