"""Objective registry and the FPA rule (docs/method.md section 4).

An objective is one function that maps a batch of per-sequence statistics to one loss per unit
(pair, sample or token), registered with `@register_objective(name, ...)`. Everything shared lives
in `Objective.__call__`: input validation, the normalisation contract and FPA.

FPA without per-objective code: the gradient coefficients C_w, C_l of docs/method.md section 2 are the
slopes dL/dl of the per-unit loss with respect to each summed log-prob l. We take those slopes by
autograd on detached copies of l evaluated at pi_hat (future_logp) and train on the surrogate
sum_i sg(slope_i) * l_i, so the score-function direction grad l stays pi_theta's. The slopes are
per unit only if unit i's loss depends on no other unit's l: every registered objective keeps that
(KTO's batch KL estimate is a detached input).

Normalisation contract (as NeMo-RL): loss = sum of unit losses / normalizer, where normalizer
counts the units of the *global* batch (all micro-batches, all workers). Summing the gradients of
micro-batches then equals the full-batch gradient, whatever the split.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fpa_ray.objectives.batches import LabelledBatch, PairedBatch, SequenceStats, TokenBatch

ApplyTo = Literal["both", "rejected", "chosen"]
Batch = PairedBatch | LabelledBatch | TokenBatch
UnitLoss = Callable[..., Tensor | tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class ObjectiveOutput:
    """`loss` is what to backpropagate: its value is the plain objective, its gradient the FPA one when FPA is on."""

    loss: Tensor
    metrics: dict[str, Tensor]


def _split(result: Tensor | tuple[Tensor, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    return result if isinstance(result, tuple) else (result, {})


@dataclass(frozen=True)
class Objective:
    name: str
    unit_loss: UnitLoss
    batch_type: type
    needs_reference: bool
    needs_kl_reference: bool = False  # KTO's z0, estimated by the caller on mismatched pairs

    @property
    def params(self) -> dict[str, inspect.Parameter]:
        """The objective's hyperparameters: the keyword-only arguments of its function."""
        signature = inspect.signature(self.unit_loss)
        return {n: p for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def supports_fpa(self) -> bool:
        return self.batch_type is not TokenBatch

    def __call__(
        self, batch: Batch, *, apply_to: ApplyTo = "both", normalizer: float | None = None, **params: Any
    ) -> ObjectiveOutput:
        """Loss and metrics of `batch`; FPA is on when every sequence carries `future_logp`."""
        if not isinstance(batch, self.batch_type):
            raise TypeError(f"objective {self.name!r} takes a {self.batch_type.__name__}, got {type(batch).__name__}")
        unknown = set(params) - set(self.params)
        if unknown:
            raise TypeError(f"objective {self.name!r} has no parameter(s) {sorted(unknown)}; it accepts {sorted(self.params)}")
        if apply_to not in ("both", "rejected", "chosen"):
            raise ValueError(f"apply_to must be 'both', 'rejected' or 'chosen', got {apply_to!r}")
        count = batch.validate()
        if normalizer is None:
            normalizer = count
        if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float)) or not normalizer > 0:
            raise ValueError(f"normalizer must be a positive number (global unit count), got {normalizer!r}")
        if isinstance(batch, TokenBatch):
            return self._token_loss(batch, normalizer, params)
        return self._sequence_loss(batch, count, apply_to, normalizer, params)

    def _token_loss(self, batch: TokenBatch, normalizer: float, params: dict[str, Any]) -> ObjectiveOutput:
        per_token, metrics = _split(self.unit_loss(batch, **params))
        loss = (per_token * batch.mask).sum() / normalizer
        return ObjectiveOutput(loss, {"loss": (per_token[batch.mask]).mean().detach(), **metrics})

    def _sequence_loss(
        self, batch: PairedBatch | LabelledBatch, count: int, apply_to: ApplyTo, normalizer: float, params: dict[str, Any]
    ) -> ObjectiveOutput:
        sequences = batch.sequences()
        if self.needs_reference:
            for name, stats in sequences.items():
                if stats.ref_logp is None:
                    raise ValueError(f"objective {self.name!r} needs {name}.ref_logp (reference-model log-probs)")
        with_future = [stats.future_logp is not None for stats in sequences.values()]
        fpa = all(with_future)
        if any(with_future) and not fpa:
            raise ValueError("future_logp must be given for every sequence of the batch or for none")
        if not fpa and apply_to != "both":
            raise ValueError(f"apply_to={apply_to!r} targets FPA, but the batch carries no future_logp")

        with torch.set_grad_enabled(torch.is_grad_enabled() and not fpa):
            unit, extra = _split(self.unit_loss(batch, **params))
        if unit.shape != (count,):
            raise RuntimeError(f"objective {self.name!r} returned shape {tuple(unit.shape)}, expected ({count},)")

        current = self._slopes(batch, params, at_future=False)
        used = current
        if fpa:
            future = self._slopes(batch, params, at_future=True)
            used = {}
            for name in sequences:
                chosen = batch.chosen_role(name)
                targeted = {"both": torch.ones_like(chosen), "chosen": chosen, "rejected": ~chosen}[apply_to]
                used[name] = torch.where(targeted, future[name], current[name])
            # Value of the plain loss, gradient sum_i sg(slope_i(pi_hat)) * grad l_i.
            surrogate = sum((used[n] * (s.logp - s.logp.detach())).sum() for n, s in sequences.items())
            loss = (unit.detach().sum() + surrogate) / normalizer
        else:
            loss = unit.sum() / normalizer

        metrics = {"loss": unit.mean().detach(), "num_units": torch.tensor(float(count), device=unit.device), **extra}
        metrics.update(self._sequence_metrics(batch, used, current if fpa else None))
        return ObjectiveOutput(loss, metrics)

    def _slopes(self, batch: PairedBatch | LabelledBatch, params: dict[str, Any], at_future: bool) -> dict[str, Tensor]:
        """dL_unit/dl for every sequence, evaluated at pi_theta or at pi_hat, detached."""
        leaves = {
            name: (stats.future_logp if at_future else stats.logp).detach().requires_grad_()
            for name, stats in batch.sequences().items()
        }
        shadow = batch.replace_sequences(
            **{name: dataclasses.replace(stats, logp=leaves[name]) for name, stats in batch.sequences().items()}
        )
        with torch.enable_grad():
            unit, _ = _split(self.unit_loss(shadow, **params))
            grads = torch.autograd.grad(unit.sum(), list(leaves.values()), allow_unused=True)
        return {name: torch.zeros_like(leaf) if g is None else g for (name, leaf), g in zip(leaves.items(), grads)}

    def _sequence_metrics(
        self, batch: PairedBatch | LabelledBatch, used: dict[str, Tensor], current: dict[str, Tensor] | None
    ) -> dict[str, Tensor]:
        sequences = batch.sequences()
        role = torch.cat([batch.chosen_role(n) for n in sequences])
        # docs/method.md sign convention: grad L = -(C_w grad l_w - C_l grad l_l), so C_w = -slope, C_l = +slope.
        sign = torch.where(role, -1.0, 1.0)

        def reward(stats: SequenceStats) -> Tensor:
            # The implicit reward: log pi/pi_ref when a reference exists, else the mean token log-prob.
            rewards = stats.logp - stats.ref_logp if stats.ref_logp is not None else stats.logp / stats.num_tokens
            return rewards.detach().float()

        columns = {
            ("C_w", "C_l"): sign * torch.cat([used[n] for n in sequences]),
            ("logp_chosen", "logp_rejected"): torch.cat([s.logp.detach().float() for s in sequences.values()]),
            ("reward_chosen", "reward_rejected"): torch.cat([reward(s) for s in sequences.values()]),
        }
        if current is not None:
            columns["C_w_current", "C_l_current"] = sign * torch.cat([current[n] for n in sequences])
            columns["future_logp_chosen", "future_logp_rejected"] = torch.cat([s.future_logp for s in sequences.values()])
        # Side counts, so means over micro-batches can weight each side's metrics by its own rows.
        metrics: dict[str, Tensor] = {"num_chosen": role.sum().float(), "num_rejected": (~role).sum().float()}
        for (key_w, key_l), values in columns.items():
            for key, where in ((key_w, role), (key_l, ~role)):
                if where.any():  # an all-correct labelled batch has no rejected side
                    metrics[key] = values[where].mean()
        if isinstance(batch, PairedBatch):
            margin = reward(batch.chosen) - reward(batch.rejected)
            metrics["reward_margin"] = margin.mean()
            metrics["reward_accuracy"] = (margin > 0).float().mean()
        elif "reward_chosen" in metrics and "reward_rejected" in metrics:
            metrics["reward_margin"] = metrics["reward_chosen"] - metrics["reward_rejected"]
        return metrics


_REGISTRY: dict[str, Objective] = {}


def register_objective(
    name: str, *, batch: type, needs_reference: bool, needs_kl_reference: bool = False
) -> Callable[[UnitLoss], UnitLoss]:
    """Register a per-unit loss function under `name`; its keyword-only arguments are its hyperparameters."""

    def decorate(fn: UnitLoss) -> UnitLoss:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        objective = Objective(name, fn, batch, needs_reference, needs_kl_reference)
        for param in objective.params.values():
            if param.default is inspect.Parameter.empty:
                raise TypeError(f"objective {name!r}: hyperparameter {param.name!r} needs a default")
        _REGISTRY[name] = objective
        return fn

    return decorate


def get_objective(name: str) -> Objective:
    """The registered objective called `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def objective_names() -> list[str]:
    return sorted(_REGISTRY)
