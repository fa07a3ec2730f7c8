"""The online baseline's objective: GRPO's clipped surrogate with token-level normalisation.

Not an FPA objective: its coefficients come from sampled advantages, not from pi. The optional KL
penalty uses the k3 estimator exp(d) - d - 1 with d = log pi_ref - log pi (DeepSeekMath).
Once a rollout makes several optimizer steps the ratio can grow far from 1, and for a negative
advantage the PPO minimum then takes the unclipped rho A, unbounded: the dual clip (verl's
`clip_ratio_c`, Ye et al. 2020) caps that loss at -clip_ratio_c A, and the log-ratio is clamped to
[-20, 20] before exp so it cannot overflow.
Rollouts sampled by older weights than the learner's (grpo.layout=split-async) carry the sampler's
log-probs; each token's clipped surrogate is then weighted by min(pi_old / pi_sampler, batch.tis_cap), where
pi_old (`old_logp`) is the learner's policy before the step's first update: truncated importance
sampling (verl's TIS), the behaviour correction of AReaL's decoupled PPO objective with its weight
truncated. The KL term is not weighted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fpa_ray.objectives.batches import TokenBatch
from fpa_ray.objectives.registry import register_objective


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """(r - group mean) / (group std + eps) for rewards laid out as consecutive groups of `group_size`."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to normalise within a group, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def informative_groups(correct: Tensor, group_size: int) -> Tensor:
    """One bool per group: some but not all of its samples are correct (DAPO's dynamic-sampling filter:
    a group all right or all wrong has zero advantage everywhere and no gradient)."""
    groups = correct.reshape(-1, group_size).bool()
    return groups.any(dim=1) & ~groups.all(dim=1)


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment: 0 up to max_tokens - buffer tokens, then linearly down to -1 at max_tokens."""
    if not 0 < buffer < max_tokens:
        raise ValueError(f"the overlong buffer must be in (0, max_tokens={max_tokens}), got {buffer}")
    return ((max_tokens - buffer - lengths.float()) / buffer).clamp(-1.0, 0.0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return values[mask].mean().detach()


@register_objective("grpo", batch=TokenBatch, needs_reference=False)
def grpo(
    batch: TokenBatch, *, clip_eps: float = 0.2, clip_eps_high: float | None = None, clip_ratio_c: float | None = 3.0, kl_coef: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A), capped at -clip_ratio_c A where A < 0, weighted by
    min(pi_old / pi_sampler, batch.tis_cap) when the batch carries the sampler's log-probs, + kl_coef k3(pi_ref || pi)."""
    if kl_coef > 0 and batch.ref_logp is None:
        raise ValueError("objective 'grpo' with kl_coef > 0 needs ref_logp")
    if clip_ratio_c is not None and not clip_ratio_c > 1:
        raise ValueError(f"clip_ratio_c must be > 1 (the dual clip's lower bound on -rho A), got {clip_ratio_c}")
    mask = batch.mask
    # Padding may hold any value; zero it before exp so it cannot overflow into the masked sum.
    log_ratio = torch.where(mask, batch.logp - batch.old_logp, 0.0).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    advantages = batch.advantages.unsqueeze(1) if batch.advantages.dim() == 1 else batch.advantages
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    metrics = {"clip_fraction": _masked_mean((clipped < unclipped).float(), mask), "ratio": _masked_mean(ratio, mask)}
    if clip_ratio_c is not None:
        negative = (advantages < 0).expand_as(per_token)
        capped = -clip_ratio_c * advantages
        metrics["dual_clip_fraction"] = _masked_mean((negative & (per_token > capped)).float(), mask)
        per_token = torch.where(negative, torch.minimum(per_token, capped), per_token)
    if batch.behaviour_logp is not None:
        weight = torch.exp(torch.where(mask, batch.old_logp - batch.behaviour_logp, 0.0).clamp(-20.0, 20.0)).detach()
        truncated = weight.clamp(max=batch.tis_cap)
        metrics["tis_weight"] = _masked_mean(truncated, mask)
        metrics["tis_clip_fraction"] = _masked_mean((weight > batch.tis_cap).float(), mask)
        per_token = per_token * truncated
    if batch.ref_logp is not None:
        delta = torch.where(mask, batch.ref_logp - batch.logp, 0.0)
        kl = torch.exp(delta) - delta - 1
        metrics["kl"] = _masked_mean(kl, mask)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    return per_token, metrics
