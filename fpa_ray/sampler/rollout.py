"""The sampler pool as long-lived actors, for the online loop: sample on demand, new weights in place.

The offline generate stage starts its engines per stage (Ray Data actor pool) and lets them go;
the online loop keeps `num_actors` engines alive for the whole run and loads each new policy into
them, over the learner's weight group (`receive`), from the object store (`sync`) or from a
checkpoint directory (`refresh`), checked by the log-prob probe of refresh.py. Same engines, same
per-sample seeds, same output rows as the generate stage. In the colocated layout each engine sits
on a learner worker's device: it sleeps while the worker trains and takes the worker's weights on
that device (`take`, same_device.py), waking first.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from fpa_ray.config import SamplerConfig
from fpa_ray.data.sources import PromptRow
from fpa_ray.sampler.refresh import probe_gap, receive_weights, refresh_weights, sync_weights
from fpa_ray.sampler.same_device import SharedWeights, opened
from fpa_ray.sampler.stage import SamplerActor, actor_env, on_engine_thread


class RolloutWorker(SamplerActor):
    """One engine; `rollout` returns the generate stage's rows instead of writing shards."""

    def __init__(self, checkpoint: str, config: SamplerConfig, template: str, sleep_mode: bool = False):
        super().__init__([(str(checkpoint), "", str(checkpoint))], config, template, seed=0, sleep_mode=sleep_mode)
        self.naps: list[list] = []  # [fell asleep, woke] (UNIX seconds) and the resident bytes asleep, of each sleep

    def _awake(self) -> None:
        if self.naps and self.naps[-1][1] is None:
            self.engine.wake_up()
            self.naps[-1][1] = time.time()

    @on_engine_thread
    def rollout(self, prompts: list[PromptRow], seed: int, policy_id: str) -> pa.Table:
        self._awake()
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

    @on_engine_thread
    def naps_taken(self) -> list[list]:
        return self.naps

    @on_engine_thread
    def take(self, shared: SharedWeights, expected: list[float] | None, tolerance: float) -> float | None:
        """The colocated learner worker's weights, opened on this device and loaded in place (waking first);
        with `expected`, the learner's probe log-probs, also check the engine (the gap, else None)."""
        self._awake()
        return sync_weights(self.engine, opened(shared), expected, tolerance)

    @on_engine_thread
    def refresh(self, checkpoint: str, probe: bool, tolerance: float) -> float | None:
        """Load `checkpoint`; with `probe`, also check the engine against the learner (the gap, else None)."""
        if probe:
            return refresh_weights(self.engine, Path(checkpoint), tolerance)
        self.engine.load_weights(Path(checkpoint))
        return None

    @on_engine_thread
    def sync(self, weights: dict, expected: list[float] | None, tolerance: float) -> float | None:
        """Load the learner's tensors (Ray resolves the object-store reference to them); with
        `expected`, the learner's probe log-probs, also check the engine (the gap, else None)."""
        return sync_weights(self.engine, weights.items(), expected, tolerance)

    @on_engine_thread
    def join_weight_group(self, address, first_rank: int) -> int:
        """Join the learner's weight group from this engine's workers; returns how many ranks they take."""
        from fpa_ray.sampler.weight_group import node_address

        return self.engine.join_weight_group(address, first_rank, node_address())

    @on_engine_thread
    def receive(self, group: str, tensors: list, expected: list[float] | None, tolerance: float) -> float | None:
        """Receive the learner's broadcast over the weight group; with `expected`, probe (the gap, else None)."""
        return receive_weights(self.engine, group, tensors, expected, tolerance)

    @on_engine_thread
    def engine_identity(self) -> tuple[int, int]:
        """(process id, id of the engine object): what an in-place sync must leave unchanged."""
        import os

        return os.getpid(), id(getattr(self.engine, "llm", self.engine))

    @on_engine_thread
    def gap(self, checkpoint: str) -> float:
        return probe_gap(self.engine, Path(checkpoint))


def start_rollout_workers(checkpoint: Path, config: SamplerConfig, template: str, name_prefix: str) -> list:
    """`config.num_actors` named sampler actors on `checkpoint` (Ray dashboard: `<prefix>-sampler-<i>`)."""
    import ray

    remote = ray.remote(RolloutWorker)
    return [
        remote.options(
            name=f"{name_prefix}-sampler-{i}",
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor,
            resources=config.resources,
            runtime_env={"env_vars": actor_env(config)},
        ).remote(str(checkpoint), config, template)
        for i in range(config.num_actors)
    ]


def start_colocated_engines(checkpoint: Path, config: SamplerConfig, template: str, name_prefix: str, placements: list) -> list:
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
        ).remote(str(checkpoint), config, template, sleep_mode=True))
    return engines
