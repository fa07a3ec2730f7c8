"""Where the learner's tensors live and what precision its reference runs in (one process, no Ray).

Device: every tensor the learner creates must follow the model's device. With the default device
set to `meta`, a constructor that forgets `device=` makes a meta tensor and the step fails, so a
step that runs through proves every tensor followed the model (on CPU) instead of the default.
Precision: precomputed reference log-probs come from the learner's precision, so l - l_ref = 0 at
step 0 when the reference is the policy.
"""

import numpy as np
import pytest
import torch

from fpa_ray.config import FPAConfig, LearnerConfig
from fpa_ray.learner.backends import build_backend, load_reference
from fpa_ray.learner.data import MicroBatching, collate, prepare_examples
from fpa_ray.learner.grpo_loop import _token_logps, grpo_loss
from fpa_ray.learner.reference import ReferenceActor
from fpa_ray.learner.optimizer_step import train_step
from fpa_ray.objectives import get_objective

from tests.helpers.distributed_learner import examples, save_random_policy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(save_random_policy(tmp_path_factory.mktemp("policy")))


@pytest.mark.parametrize("precision,packed", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_every_tensor_of_a_step_follows_the_model_device_not_the_default(policy, precision, packed):
    learner = LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=4, precision=precision)
    backend = build_backend(learner, policy, None, 4, CPU)
    reference = load_reference(policy, backend.precision, CPU)
    rows = {kind: examples(kind) for kind in ("paired", "labelled")}
    torch.set_default_device("meta")
    try:
        for objective, kind in (("kto", "labelled"), ("rpo", "paired")):  # KTO: z0's mismatched rows and their forward
            metrics = train_step(backend, get_objective(objective), {}, reference, rows[kind], list(range(8)), kind, 0,
                                 FPAConfig(enabled=True, lam=1.0, chunk_size=5), MicroBatching(4, packed=packed), 512, precomputed=False)
            assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
        # GRPO's path: old and reference log-probs per row, placed back into [rows, tokens]
        batch, _ = collate(rows["labelled"][:4], "labelled", 0, CPU, packed=packed)
        old = _token_logps(reference, rows["labelled"][:4], MicroBatching(2, packed=packed), 0, CPU, backend.precision)
        with backend.micro_batch(last=True):
            out, _ = grpo_loss(get_objective("grpo"), {"kl_coef": 0.1}, backend.model, batch, torch.ones(4, device=CPU), None, old, old)
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.loss.device == CPU
    finally:
        torch.set_default_device("cpu")


def _rows(kind: str) -> list[dict]:
    if kind == "paired":
        return [{"prompt_token_ids": list(e.prompt), "chosen_token_ids": list(e.responses[0]), "rejected_token_ids": list(e.responses[1])}
                for e in examples("paired")]
    return [{"prompt_token_ids": list(e.prompt), "completion_token_ids": list(e.responses[0]), "label": e.label} for e in examples("labelled")]


@pytest.mark.parametrize("padding_free", [False, True])
def test_precomputed_reference_equals_the_bf16_policy_at_step_zero(policy, padding_free):
    """Sequence-mode FPA trains from precomputed sums alone; at step 0 the reference is the policy, so l - l_ref = 0
    (exactly, in bf16: the reference actor lays rows out as the learner does, packed or padded)."""
    learner = LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=4, precision="bf16", padding_free=padding_free)
    rows = _rows("paired")
    actor = ReferenceActor(policy, "paired", learner)
    columns = actor({key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]})
    prepared = prepare_examples([{key: columns[key][i] for key in columns} for i in range(len(rows))], "paired", learner.max_length)
    assert all(e.ref_logp is not None for e in prepared.examples)
    backend = build_backend(learner, policy, None, 1, CPU)
    metrics = train_step(backend, get_objective("dpo"), {}, None, prepared.examples, list(range(8)), "paired", 0,
                         FPAConfig(enabled=True, lam=2.0, mode="sequence"), MicroBatching.of(learner), 512, precomputed=True)
    assert metrics["reward_chosen"] == 0.0 and metrics["reward_rejected"] == 0.0


@pytest.mark.parametrize("strategy,param_dtype", [("ddp", torch.float32), ("deepspeed", torch.bfloat16)])
def test_the_reference_actor_stores_weights_as_the_backend_does(policy, strategy, param_dtype):
    learner = LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=4, precision="bf16", strategy=strategy)
    actor = ReferenceActor(policy, "paired", learner)
    assert {p.dtype for p in actor.model.parameters()} == {param_dtype}
    assert actor.precision.compute_dtype == torch.bfloat16 and actor.device == CPU
