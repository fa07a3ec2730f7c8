"""Per-sequence and per-token inputs that every objective consumes.

The learner reduces model outputs to these small tensors; objectives never see a model.
Validation lives here so that every objective reports bad input the same way, naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


def _check_vector(name: str, value: Tensor, size: int | None) -> int:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per sequence), got shape {tuple(value.shape)}")
    if size is not None and value.shape[0] != size:
        raise ValueError(f"{name} has {value.shape[0]} entries but the batch has {size}")
    return value.shape[0]


def _check_finite(name: str, value: Tensor, where: Tensor | None = None) -> None:
    bad = ~torch.isfinite(value.detach())
    if where is not None:
        bad &= where
    if bad.any():
        index = bad.nonzero()[0].tolist()
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {index}")


@dataclass(frozen=True)
class SequenceStats:
    """Summed log-probabilities of a batch of responses (one entry per sequence)."""

    logp: Tensor  # sum_t log pi_theta(y_t), carries the gradient
    num_tokens: Tensor  # response length |y|
    ref_logp: Tensor | None = None  # sum_t log pi_ref(y_t), no gradient
    future_logp: Tensor | None = None  # sum_t log pi_hat(y_t) (docs/method.md section 3); FPA is on when set

    def validate(self, name: str, size: int | None = None) -> int:
        """Raise a ValueError naming `name.field` on a shape, count or finiteness problem."""
        size = _check_vector(f"{name}.logp", self.logp, size)
        _check_vector(f"{name}.num_tokens", self.num_tokens, size)
        if (self.num_tokens <= 0).any():
            index = (self.num_tokens <= 0).nonzero()[0].tolist()
            raise ValueError(f"{name}.num_tokens must be positive (empty response), first at index {index}")
        _check_finite(f"{name}.logp", self.logp)
        for field in ("ref_logp", "future_logp"):
            value = getattr(self, field)
            if value is not None:
                _check_vector(f"{name}.{field}", value, size)
                _check_finite(f"{name}.{field}", value)
                if value.requires_grad:
                    raise ValueError(f"{name}.{field} must not require grad (compute it under torch.no_grad)")
        return size


@dataclass(frozen=True)
class PairedBatch:
    """Preference pairs: `chosen` (correct) over `rejected` (incorrect) responses to the same prompt."""

    chosen: SequenceStats
    rejected: SequenceStats

    def validate(self) -> int:
        return self.rejected.validate("rejected", self.chosen.validate("chosen"))

    def sequences(self) -> dict[str, SequenceStats]:
        return {"chosen": self.chosen, "rejected": self.rejected}

    def chosen_role(self, name: str) -> Tensor:
        """True where a sequence plays the chosen (C_w) role."""
        stats = self.sequences()[name]
        return torch.full_like(stats.num_tokens, name == "chosen", dtype=torch.bool)

    def replace_sequences(self, **stats: SequenceStats) -> PairedBatch:
        return dataclasses.replace(self, **stats)


@dataclass(frozen=True)
class LabelledBatch:
    """Unpaired samples labelled by the verifier: `correct` True is desirable, False undesirable."""

    samples: SequenceStats
    correct: Tensor  # bool, one per sample
    kl_reference: Tensor | None = None  # KTO's z0: a detached scalar estimate of KL(pi_theta || pi_ref)

    def validate(self) -> int:
        size = self.samples.validate("samples")
        _check_vector("correct", self.correct, size)
        if self.correct.dtype != torch.bool:
            raise ValueError(f"correct must be a bool tensor (True = verified correct), got {self.correct.dtype}")
        if self.kl_reference is not None:
            if self.kl_reference.dim() != 0:
                raise ValueError(f"kl_reference must be a scalar, got shape {tuple(self.kl_reference.shape)}")
            _check_finite("kl_reference", self.kl_reference.reshape(1))
        return size

    def sequences(self) -> dict[str, SequenceStats]:
        return {"samples": self.samples}

    def chosen_role(self, name: str) -> Tensor:
        return self.correct

    def replace_sequences(self, **stats: SequenceStats) -> LabelledBatch:
        return dataclasses.replace(self, **stats)


@dataclass(frozen=True)
class TokenBatch:
    """Per-token inputs of the online policy-gradient baseline (GRPO), shape [B, T]. `advantages` is one
    per row ([B], a sequence per row) or one per token ([B, T]: rows that pack several sequences)."""

    logp: Tensor  # log pi_theta(y_t), carries the gradient
    old_logp: Tensor  # log-probs under the policy that sampled the tokens
    mask: Tensor  # bool, True on response tokens
    advantages: Tensor  # [B], one per sequence, or [B, T], one per token
    ref_logp: Tensor | None = None  # log pi_ref(y_t), needed when a KL penalty is used
    behaviour_logp: Tensor | None = None  # log-probs under the (stale) sampler's weights, for the importance correction
    tis_cap: float | None = None  # with behaviour_logp: the importance weight's truncation

    def validate(self) -> int:
        if self.logp.dim() != 2:
            raise ValueError(f"logp must be [batch, tokens], got shape {tuple(self.logp.shape)}")
        for field in ("old_logp", "mask", "ref_logp", "behaviour_logp"):
            value = getattr(self, field)
            if value is not None and value.shape != self.logp.shape:
                raise ValueError(f"{field} has shape {tuple(value.shape)} but logp has {tuple(self.logp.shape)}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {self.mask.dtype}")
        if not self.mask.any():
            raise ValueError("mask selects no tokens: every response in the batch is empty")
        if (self.behaviour_logp is None) != (self.tis_cap is None) or (self.tis_cap is not None and not self.tis_cap > 0):
            raise ValueError(f"the importance correction needs both the sampler's log-probs and a tis_cap > 0, got tis_cap={self.tis_cap}")
        if isinstance(self.advantages, Tensor) and self.advantages.dim() == 2:
            if self.advantages.shape != self.logp.shape:
                raise ValueError(f"per-token advantages have shape {tuple(self.advantages.shape)} but logp has {tuple(self.logp.shape)}")
            _check_finite("advantages", self.advantages, where=self.mask)
        else:
            _check_vector("advantages", self.advantages, self.logp.shape[0])
            _check_finite("advantages", self.advantages)
        for field in ("logp", "old_logp", "ref_logp", "behaviour_logp"):
            value = getattr(self, field)
            if value is not None:
                _check_finite(field, value, where=self.mask)
        return int(self.mask.sum())
