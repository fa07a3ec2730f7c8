"""How the online GRPO loop lays sampling and training out on the cluster: one object per `grpo.layout`.

A layout says which resources the loop holds (and is charged for in every phase), how many
rollouts the learner asks for ahead of the step it trains, and whether the loss corrects for
rollouts sampled by older weights. The loop itself (learner/online.py, the rollout controller)
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
"""

from __future__ import annotations

from dataclasses import dataclass

from fpa_ray.config import GRPOConfig, RunConfig


@dataclass(frozen=True)
class Split:
    name = "split"

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


def grpo_layout(grpo: GRPOConfig) -> Split:
    if grpo.layout == "split-async":
        return SplitAsync(grpo.max_staleness, grpo.tis_cap)
    return Split()
