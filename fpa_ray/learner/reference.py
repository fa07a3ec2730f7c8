"""Reference log-probs precomputed once per dataset, as columns (`ref_chosen_logp`, `ref_rejected_logp`
or `ref_logp`), so that reference-based objectives without FPA, and FPA in `sequence` mode, train
without a reference model in the workers. Exact-mode FPA still needs the reference's logits online.
Rows the learner would truncate or drop get no value (null): a dataset with any such row is
trained with the online reference instead.
The actors run on the learner's device type and in its precision (learner/backends.py): a bf16
policy against fp32 reference sums would start at l - l_ref != 0 (0.02-0.08 nats per 249 tokens on a
random tiny model), which sequence-mode FPA multiplies by lambda.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpa_ray.config import LearnerConfig
from fpa_ray.devices import compute_device, stand_in_env
from fpa_ray.learner.backends import load_reference, precision_for
from fpa_ray.learner.data import REF_COLUMNS, Example, Kind, collate, prepare_row
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.objectives import token_logprobs


class ReferenceActor:
    """map_batches callable: the reference model's summed log-prob of every response in a batch."""

    def __init__(self, checkpoint: str, kind: Kind, learner: LearnerConfig):
        from transformers import AutoTokenizer

        self.device = compute_device(learner.gpus_per_worker, "the reference log-prob actor")
        self.precision = precision_for(learner, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = load_reference(checkpoint, self.precision, self.device)
        self.kind, self.max_length, self.packed = kind, learner.max_length, learner.padding_free  # the learner's layout

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(batch.values())))
        rows = [{key: values[i] for key, values in batch.items()} for i in range(count)]
        examples = [prepare_row(row, i, self.kind, self.max_length, self.tokenizer) for i, row in enumerate(rows)]
        usable = [i for i, e in enumerate(examples) if isinstance(e, Example) and not e.truncated]
        sides = len(REF_COLUMNS[self.kind])
        values = np.full((sides, count), np.nan)
        if usable:
            tokenized, _ = collate([examples[i] for i in usable], self.kind, self.tokenizer.pad_token_id, self.device, packed=self.packed)
            labels, mask = shifted_targets(tokenized)
            with self.precision.autocast(self.device):
                logits = self.model(**tokenized.model_inputs()).logits
            sums = tokenized.sequence_sums(token_logprobs(logits, labels, mask), mask).view(sides, len(usable))
            values[:, usable] = sums.double().cpu().numpy()
        out = dict(batch)
        for side, column in enumerate(REF_COLUMNS[self.kind]):
            out[column] = np.array([None if np.isnan(v) else float(v) for v in values[side]], dtype=object)
        return out


def add_reference_logprobs(dataset, checkpoint: Path, kind: Kind, learner: LearnerConfig, num_actors: int = 1, batch_size: int | None = None):
    """`dataset` with the reference log-prob columns added (lazy Ray Dataset), computed as `learner` will train."""
    import ray

    return dataset.map_batches(
        ReferenceActor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "kind": kind, "learner": learner},
        batch_size=batch_size or learner.micro_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=learner.cpus_per_worker,
        num_gpus=learner.gpus_per_worker,
        resources=learner.resources,
        runtime_env={"env_vars": stand_in_env()},
    )
