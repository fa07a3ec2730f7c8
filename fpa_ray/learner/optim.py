"""Optimizer and learning-rate schedule of the learner."""

from __future__ import annotations

import math

import torch

from fpa_ray.config import LearnerConfig


def lr_factor(step: int, total_steps: int, config: LearnerConfig) -> float:
    """Linear warm-up to the peak, then constant or cosine down to min_lr_ratio at total_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, config: LearnerConfig, total_steps: int):
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))
    return optimizer, scheduler
