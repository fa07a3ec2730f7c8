"""The sampler pool as long-lived actors, for the online loop: sample on demand, new weights in place.

The offline generate stage starts its engines per stage (Ray Data actor pool) and lets them go;
the online loop keeps `num_actors` engines alive for the whole run and loads each new policy into
them, over the learner's weight group (`receive`), from the object store (`sync`) or from a
checkpoint directory (`refresh`), checked by the log-prob probe of refresh.py. Same engines, same
per-sample seeds, same output rows as the generate stage.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from fpa_ray.config import SamplerConfig
from fpa_ray.data.sources import PromptRow
from fpa_ray.sampler.refresh import probe_gap, receive_weights, refresh_weights, sync_weights
from fpa_ray.sampler.stage import SamplerActor, actor_env, on_engine_thread


class RolloutWorker(SamplerActor):
    """One engine; `rollout` returns the generate stage's rows instead of writing shards."""

    def __init__(self, checkpoint: str, config: SamplerConfig, template: str):
        super().__init__([(str(checkpoint), "", str(checkpoint))], config, template, seed=0)

    @on_engine_thread
    def rollout(self, prompts: list[PromptRow], seed: int, policy_id: str) -> pa.Table:
        self.seed = seed
        table, _ = self._generate(prompts, policy_id)
        return table

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
