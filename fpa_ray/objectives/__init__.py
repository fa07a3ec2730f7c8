"""Pure-torch objectives: per-sequence statistics in, loss and metrics out; no Ray, no model code.

    objective = get_objective("dpo")
    out = objective(PairedBatch(chosen, rejected), beta=0.1)   # FPA when the stats carry future_logp
    out.loss.backward()
"""

# Importing the objective modules registers dpo, rpo, simper, kto, offline_rl, reinforce and grpo.
from fpa_ray.objectives import grpo, preference, unpaired  # noqa: F401
from fpa_ray.objectives.batches import LabelledBatch, PairedBatch, SequenceStats, TokenBatch
from fpa_ray.objectives.diagnostics import gradient_entanglement
from fpa_ray.objectives.grpo import group_advantages
from fpa_ray.objectives.logprobs import future_logprobs, future_sequence_logprobs, masked_sum, reference_and_future_logprobs, token_logprobs
from fpa_ray.objectives.registry import (
    Objective,
    ObjectiveOutput,
    get_objective,
    objective_names,
    register_objective,
)
from fpa_ray.objectives.unpaired import kto_reference_point

__all__ = [
    "LabelledBatch",
    "Objective",
    "ObjectiveOutput",
    "PairedBatch",
    "SequenceStats",
    "TokenBatch",
    "future_logprobs",
    "future_sequence_logprobs",
    "get_objective",
    "gradient_entanglement",
    "group_advantages",
    "kto_reference_point",
    "masked_sum",
    "objective_names",
    "reference_and_future_logprobs",
    "register_objective",
    "token_logprobs",
]
