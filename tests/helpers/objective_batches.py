"""Random per-sequence statistics in float64 for objective tests."""

from __future__ import annotations

import torch

from fpa_ray.objectives import LabelledBatch, PairedBatch, SequenceStats, kto_reference_point

PAIRED = ["dpo", "rpo", "simper"]
LABELLED = ["kto", "offline_rl", "reinforce"]
FPA_OBJECTIVES = PAIRED + LABELLED


def random_stats(generator: torch.Generator, size: int, lam: float | None = None) -> SequenceStats:
    """Summed log-probs of plausible magnitude; `future_logp` in sequence mode when lam is given."""
    num_tokens = torch.randint(3, 20, (size,), generator=generator).double()
    logp = (-(torch.rand(size, generator=generator, dtype=torch.float64) * 2 + 0.05) * num_tokens).requires_grad_()
    ref_logp = logp.detach() + torch.randn(size, generator=generator, dtype=torch.float64)
    future = None if lam is None else (1 + lam) * logp.detach() - lam * ref_logp
    return SequenceStats(logp=logp, num_tokens=num_tokens, ref_logp=ref_logp, future_logp=future)


def random_batch(name: str, size: int = 6, lam: float | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    if name in PAIRED:
        return PairedBatch(random_stats(generator, size, lam), random_stats(generator, size, lam))
    samples = random_stats(generator, size, lam)
    correct = torch.arange(size) % 2 == 0
    z0 = kto_reference_point(samples.logp + 0.3, samples.ref_logp)
    return LabelledBatch(samples, correct, kl_reference=z0)


def leaves(batch) -> list[torch.Tensor]:
    return [stats.logp for stats in batch.sequences().values()]
