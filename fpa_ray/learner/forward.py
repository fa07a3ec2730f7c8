"""From a tokenised micro-batch to the per-sequence statistics that objectives consume.

Layouts: a paired micro-batch stacks all chosen rows first and the rejected rows of the same
pairs second (as TRL's concatenated forward); a labelled micro-batch carries `correct` per row.
The reference model runs only when the objective or FPA needs it; exact-mode FPA reads the
policy's and the reference's full logits, in chunks of positions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fpa_ray.config import FPAConfig
from fpa_ray.objectives import (
    LabelledBatch,
    Objective,
    PairedBatch,
    SequenceStats,
    future_sequence_logprobs,
    masked_sum,
    reference_and_future_logprobs,
    token_logprobs,
)


@dataclass(frozen=True)
class TokenizedBatch:
    """Prompt+response token ids, `response_mask` True on response tokens, in one of two layouts:
    padded (one sequence per row, right-padded: `attention_mask` 0 on padding) or packed
    (`position_ids` and `sequence_ids` given: several sequences per row, positions restarting at 0 with
    each; the model then attends within each sequence only, a block-diagonal mask under SDPA)."""

    input_ids: Tensor  # [R, T]
    attention_mask: Tensor  # [R, T]: 1 on every sequence's tokens (the count of trained tokens)
    response_mask: Tensor  # [R, T], bool
    correct: Tensor | None = None  # [N sequences], bool, for labelled objectives
    position_ids: Tensor | None = None  # [R, T] when packed; a row's tail padding is a segment of its own
    sequence_ids: Tensor | None = None  # [R, T] when packed: the sequence (0 .. N-1) each token belongs to, -1 on padding

    def __post_init__(self) -> None:
        if not (self.input_ids.shape == self.attention_mask.shape == self.response_mask.shape):
            raise ValueError("input_ids, attention_mask and response_mask must share one [rows, tokens] shape")
        if self.response_mask.dtype != torch.bool:
            raise ValueError(f"response_mask must be bool, got {self.response_mask.dtype}")
        if (self.position_ids is None) != (self.sequence_ids is None):
            raise ValueError("a packed batch needs both position_ids and sequence_ids")
        if self.packed and not (self.position_ids.shape == self.sequence_ids.shape == self.input_ids.shape):
            raise ValueError("position_ids and sequence_ids must have input_ids' [rows, tokens] shape")

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def model_inputs(self) -> dict:
        """The model's keyword arguments: transformers detects packing from position ids only without
        an attention mask and without a KV cache (which it otherwise creates in eval mode)."""
        if self.packed:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def token_sequences(self, mask: Tensor) -> Tensor:
        """The sequence (0 .. N-1) of each of `mask`'s positions, in row-major order."""
        if self.packed:
            return self.sequence_ids[mask]
        return torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]

    def sequence_tokens(self, values: Tensor, mask: Tensor) -> list[Tensor]:
        """`values` at `mask`'s positions, one 1-D tensor per sequence, in sequence order."""
        owner = self.token_sequences(mask)
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=self.num_sequences).tolist()
        return list(values[mask][order].split(counts))

    def place(self, per_sequence: list[Tensor], mask: Tensor) -> Tensor:
        """The inverse of `sequence_tokens`: per-sequence 1-D values into a [rows, tokens] tensor, 0 elsewhere."""
        order = torch.argsort(self.token_sequences(mask), stable=True)
        flat = torch.empty(order.numel(), dtype=per_sequence[0].dtype, device=mask.device)
        flat[order] = torch.cat(per_sequence).to(mask.device)
        out = torch.zeros(mask.shape, dtype=flat.dtype, device=mask.device)
        out[mask] = flat
        return out

    def per_token(self, per_sequence: Tensor) -> Tensor:
        """[N] values, one per sequence: [N] again when padded (one sequence per row), else each
        token's sequence's value, [rows, tokens] (0 on padding)."""
        if not self.packed:
            return per_sequence
        padded = torch.cat([per_sequence, per_sequence.new_zeros(1)])  # the padding's bin: -1 reads the last entry
        return padded[self.sequence_ids]

    @property
    def num_sequences(self) -> int:
        return int(self.sequence_ids.max()) + 1 if self.packed else self.input_ids.shape[0]

    def sequence_sums(self, values: Tensor, mask: Tensor) -> Tensor:
        """[N]: the sum of `values` over each sequence's masked tokens, in sequence order."""
        if not self.packed:
            return masked_sum(values, mask)
        count = self.num_sequences
        index = torch.where(self.sequence_ids >= 0, self.sequence_ids, count).reshape(-1)  # padding: one bin more, dropped
        sums = torch.zeros(count + 1, dtype=values.dtype, device=values.device)
        return sums.index_add(0, index, (values * mask).reshape(-1))[:count]


def sequence_stats(
    policy_logits: Tensor,
    ref_logits: Tensor | None,
    labels: Tensor,
    mask: Tensor,
    fpa: FPAConfig | None = None,
    sums=masked_sum,
) -> SequenceStats:
    """Summed policy (with grad), reference and future log-probs of each sequence's labelled tokens;
    `sums(values, mask)` reduces tokens to sequences (a packed batch's `sequence_sums`)."""
    chunk = fpa.chunk_size if fpa is not None else None  # None: automatic
    logp = sums(token_logprobs(policy_logits, labels, mask, chunk), mask)
    fpa = fpa if fpa is not None and fpa.enabled else None
    if fpa is not None and ref_logits is None:
        raise ValueError("FPA needs the reference model's logits")
    ref_logp = future = None
    if fpa is not None and fpa.mode == "exact":  # the reference's and pi_hat's log-sum-exps in one pass over its logits
        ref_tokens, future_tokens = reference_and_future_logprobs(policy_logits.detach(), ref_logits, labels, fpa.lam, mask, chunk)
        ref_logp, future = sums(ref_tokens, mask), sums(future_tokens, mask)
    elif ref_logits is not None:
        with torch.no_grad():
            ref_logp = sums(token_logprobs(ref_logits, labels, mask, chunk), mask)
        if fpa is not None:
            future = future_sequence_logprobs(logp, ref_logp, fpa.lam)
    return SequenceStats(logp=logp, num_tokens=sums(torch.ones_like(mask, dtype=torch.long), mask), ref_logp=ref_logp, future_logp=future)


def forward_stats(
    objective: Objective,
    model: nn.Module,
    ref_model: nn.Module | None,
    batch: TokenizedBatch,
    fpa: FPAConfig,
    ref_logp: Tensor | None = None,
) -> SequenceStats:
    """Run the policy (and the reference when needed) on `batch` and reduce to SequenceStats.

    `ref_logp`: precomputed reference sums per row; they replace the reference forward pass
    except for exact-mode FPA, which needs the reference's full logits.
    """
    needs_ref = objective.needs_reference or fpa.enabled
    needs_ref_logits = needs_ref and (ref_logp is None or (fpa.enabled and fpa.mode == "exact"))
    if needs_ref_logits and ref_model is None:
        raise ValueError(f"objective {objective.name!r}{' with FPA' if fpa.enabled else ''} needs a reference model")
    labels, mask = shifted_targets(batch)
    policy_logits = model(**batch.model_inputs()).logits
    ref_logits = None
    if needs_ref_logits:
        with torch.no_grad():
            ref_logits = ref_model(**batch.model_inputs()).logits
    stats = sequence_stats(policy_logits, ref_logits, labels, mask, fpa if ref_logits is not None else None, batch.sequence_sums)
    if ref_logits is None and needs_ref:
        stats = dataclasses.replace(stats, ref_logp=ref_logp.to(stats.logp.device))
        if fpa.enabled:  # sequence mode from precomputed reference sums
            stats = dataclasses.replace(stats, future_logp=future_sequence_logprobs(stats.logp, stats.ref_logp, fpa.lam))
    return stats


def shifted_targets(batch: TokenizedBatch) -> tuple[Tensor, Tensor]:
    """Labels and mask aligned with the model's logits: logits[:, t] predicts token t + 1.

    The targets shift left rather than the logits right: slicing [B, T, V] logits copies them. In a
    packed row a sequence's last token predicts nothing (the next token opens another sequence).
    """
    labels = torch.roll(batch.input_ids, shifts=-1, dims=1)
    mask = torch.zeros_like(batch.response_mask)
    mask[:, :-1] = batch.response_mask[:, 1:]
    if batch.packed:
        mask[:, :-1] &= batch.position_ids[:, 1:] != 0
    return labels, mask


def objective_batch(objective: Objective, stats: SequenceStats, correct: Tensor | None) -> PairedBatch | LabelledBatch:
    """Arrange per-row statistics in the objective's batch layout."""
    if objective.batch_type is PairedBatch:
        half = stats.logp.shape[0] // 2
        if stats.logp.shape[0] != 2 * half:
            raise ValueError("a paired micro-batch needs an even number of rows (chosen rows, then rejected rows)")

        def rows(part: slice) -> SequenceStats:
            pick = lambda t: None if t is None else t[part]  # noqa: E731
            return SequenceStats(stats.logp[part], stats.num_tokens[part], pick(stats.ref_logp), pick(stats.future_logp))

        return PairedBatch(rows(slice(0, half)), rows(slice(half, None)))
    if objective.batch_type is LabelledBatch:
        if correct is None:
            raise ValueError(f"objective {objective.name!r} needs the `correct` label of every row")
        return LabelledBatch(stats, correct)
    raise ValueError(f"objective {objective.name!r} is not trained from sequence statistics")
