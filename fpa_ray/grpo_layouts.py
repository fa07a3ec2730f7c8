"""How the online GRPO loop lays sampling and training out on the cluster: one object per `grpo.layout`.

A layout says which resources the loop holds (and is charged for in every phase), how many
rollouts the learner asks for ahead of the step it trains, and whether the loss corrects for
rollouts sampled by older weights. The loop itself (learner/grpo_loop.py, the rollout controller)
is the same for every layout.

- `split`: samplers and learners on resources of their own, each waiting for the other: the
  rollout of step t is sampled by the weights after update t - 1 (on-policy).
- `split-async`: the same pools; before step t trains, the rollouts of steps t + 1 .. t + k are
  requested (k = grpo.max_staleness), so the samplers generate while the learner trains and a
  rollout is sampled by weights at most k updates old (verl's one_step_off_policy at k = 1,
  prime-rl's max_off_policy_steps, OpenRLHF's async training). The weights still reach the
  samplers after every update, queued behind the rollouts already requested. The loss weights each
  token by min(pi_old / pi_sampler, grpo.tis_cap) (truncated importance sampling, verl's TIS;
  pi_old is the learner's policy before the step's first update, AReaL's proximal policy).
- `colocated`: one engine per learner worker, in the worker's own placement-group bundle and on its
  device (verl's hybrid engine, OpenRLHF's --colocate_all, NeMo-RL's colocated mode); they take
  turns: after sampling the engine sleeps (vLLM sleep level 1 on GPUs: weights offloaded, KV cache
  freed; vLLM-CPU ignores it) while the worker trains, then wakes and takes the worker's new weights
  on the device (weight_sync=same_device). The worker's bundle holds both: learner.cpus_per_worker +
  sampler.cpus_per_actor CPUs and the worker's GPUs, so the loop holds one set of devices, not two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fpa_ray.config import GRPOConfig, RunConfig


@dataclass(frozen=True)
class Split:
    name = "split"
    colocated = False

    @property
    def ahead(self) -> int:
        """Rollouts requested beyond the one the learner trains on now."""
        return 0

    @property
    def max_staleness(self) -> int:
        """Updates the weights that sampled a rollout may lag behind the learner's when it trains."""
        return self.ahead

    @property
    def tis_cap(self) -> float | None:
        """The truncated-importance-sampling cap the loss applies, None where rollouts are on-policy."""
        return None

    def held_resources(self, config: RunConfig) -> dict[str, float]:
        """CPUs and GPUs the loop holds from start to end: samplers + verifiers + learners."""
        sampler, verifier, learner = config.sampler, config.verifier, config.learner
        return {
            "cpus": sampler.num_actors * sampler.cpus_per_actor + verifier.num_actors * verifier.workers_per_actor
            + learner.num_workers * learner.cpus_per_worker,
            "gpus": sampler.num_actors * sampler.gpus_per_actor + learner.num_workers * learner.gpus_per_worker,
        }

    def worker_bundle(self, config: RunConfig) -> dict[str, float]:
        """Ray resources of one learner worker (its placement-group bundle)."""
        learner = config.learner
        return {"CPU": learner.cpus_per_worker, **({"GPU": learner.gpus_per_worker} if learner.gpus_per_worker else {}), **learner.resources}

    def pools(self, pools: list) -> list:
        """The pools held at once (placement.Pool: sampler, verifier, learner) as this layout places them."""
        return pools


@dataclass(frozen=True)
class SplitAsync(Split):
    name = "split-async"
    staleness: int = 1
    cap: float = 2.0

    @property
    def ahead(self) -> int:
        return self.staleness

    @property
    def tis_cap(self) -> float | None:
        return self.cap


@dataclass(frozen=True)
class WorkerPlacement:
    """Where a learner worker runs, so that its engine joins it: its placement group and bundle, and
    the GPUs Ray gave it (physical ids, for the engine's CUDA_VISIBLE_DEVICES)."""

    placement_group: object
    bundle: int
    gpu_ids: tuple[str, ...]


@dataclass(frozen=True)
class Colocated(Split):
    name = "colocated"
    colocated = True

    @staticmethod
    def worker_placement() -> WorkerPlacement:
        """The calling Ray Train worker's placement."""
        import re

        import ray

        context = ray.get_runtime_context()
        # Ray names a bundle's resources `<resource>_group_<index>_<group id>`; the worker holds its own bundle's.
        bundles = {int(m.group(1)) for key in context.worker.core_worker.resource_ids() if (m := re.match(r"bundle_group_(\d+)_", key))}
        if len(bundles) != 1:
            raise RuntimeError(f"grpo.layout=colocated: the learner worker should hold one placement-group bundle, it holds {sorted(bundles)}")
        return WorkerPlacement(ray.util.get_current_placement_group(), bundles.pop(), tuple(str(i) for i in ray.get_gpu_ids()))

    def held_resources(self, config: RunConfig) -> dict[str, float]:
        """The learner workers' bundles (each with its engine's CPUs) and the verifiers."""
        verifier, learner = config.verifier, config.learner
        bundle = self.worker_bundle(config)
        return {"cpus": learner.num_workers * bundle["CPU"] + verifier.num_actors * verifier.workers_per_actor,
                "gpus": learner.num_workers * bundle.get("GPU", 0.0)}

    def worker_bundle(self, config: RunConfig) -> dict[str, float]:
        bundle = super().worker_bundle(config)
        return {**bundle, "CPU": bundle["CPU"] + config.sampler.cpus_per_actor}

    def pools(self, pools: list) -> list:
        sampler, verifier, learner = pools
        each = {key: learner.each.get(key, 0.0) + (sampler.each.get(key, 0.0) if key == "CPU" else 0.0) for key in learner.each}
        return [verifier, replace(learner, name="colocated learner", each=each)]


def grpo_layout(grpo: GRPOConfig) -> Split:
    if grpo.layout == "split-async":
        return SplitAsync(grpo.max_staleness, grpo.tis_cap)
    if grpo.layout == "colocated":
        return Colocated()
    return Split()
