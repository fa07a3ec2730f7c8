"""The objective demo: each FPA-capable objective trained with and without FPA on synthetic pairs.

What it shows: the whole learner step (fpa_ray.learner.optimizer_step.train_step on the DDP backend: policy
and reference forward, exact future log-probs, KTO's z0, objective, backward, AdamW) on a small
random Qwen2, and how FPA moves the coefficients C_w, C_l and the chosen/rejected log-probs. The chosen and rejected responses share a long prefix, the situation in
which pushing the rejected response down also pulls the chosen one down (gradient entanglement).
What it does not show: accuracy; the model and data are random. The offline pipeline does that.
"""

from __future__ import annotations

import tempfile
import time

import torch

from fpa_ray.config import FPAConfig, LearnerConfig
from fpa_ray.learner.backends import DDPBackend, load_reference
from fpa_ray.learner.data import Example, MicroBatching
from fpa_ray.learner.forward import TokenizedBatch
from fpa_ray.learner.offline_loop import example_kind
from fpa_ray.learner.optimizer_step import train_step
from fpa_ray.objectives import get_objective, objective_names
from fpa_ray.tiny import qwen2_config, random_qwen2


def synthetic_pairs(
    vocab_size: int, pairs: int, prompt_len: int, shared_len: int, suffix_len: int, seed: int = 0
) -> TokenizedBatch:
    """`pairs` chosen rows then their rejected rows; the two responses share `shared_len` tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (pairs, prompt_len), generator=g)
    shared = torch.randint(0, vocab_size, (pairs, shared_len), generator=g)
    chosen = torch.cat([prompt, shared, torch.randint(0, vocab_size, (pairs, suffix_len), generator=g)], dim=1)
    rejected = torch.cat([prompt, shared, torch.randint(0, vocab_size, (pairs, suffix_len), generator=g)], dim=1)
    input_ids = torch.cat([chosen, rejected])
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, prompt_len:] = True
    correct = torch.arange(2 * pairs) < pairs
    return TokenizedBatch(input_ids, torch.ones_like(input_ids), response_mask, correct)


def fpa_objectives() -> list[str]:
    return [name for name in objective_names() if get_objective(name).supports_fpa]


def _examples(batch: TokenizedBatch, kind: str) -> list[Example]:
    """The rows of `synthetic_pairs` as training examples: pairs, or every response with its label."""
    half = batch.input_ids.shape[0] // 2
    prompt_len = int((~batch.response_mask[0]).sum())
    rows = [tuple(batch.input_ids[i].tolist()) for i in range(2 * half)]
    if kind == "paired":
        return [Example(rows[i][:prompt_len], (rows[i][prompt_len:], rows[half + i][prompt_len:])) for i in range(half)]
    return [Example(row[:prompt_len], (row[prompt_len:],), label=bool(batch.correct[i])) for i, row in enumerate(rows)]


def run_demo(steps: int = 25, lr: float = 3e-4, lam: float = 1.0, seed: int = 0) -> list[dict[str, float | str]]:
    """Train each objective `steps` steps from one random init, plain and with exact FPA; one row per run."""
    config = qwen2_config(vocab_size=512, hidden_size=64, num_layers=2, num_kv_heads=1)
    batch = synthetic_pairs(config.vocab_size, pairs=8, prompt_len=8, shared_len=16, suffix_len=4, seed=seed)
    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as policy:
        random_qwen2(config, seed=seed).save_pretrained(policy)
        for name in fpa_objectives():
            kind = example_kind(name)
            examples = _examples(batch, kind)
            learner = LearnerConfig(num_workers=1, global_batch_size=len(examples), micro_batch_size=len(examples), lr=lr,
                                    lr_schedule="constant", grad_clip=None, precision="fp32")
            for fpa in (FPAConfig(enabled=False), FPAConfig(enabled=True, lam=lam)):
                torch.manual_seed(seed)
                backend = DDPBackend(learner, policy, None, steps, cpu)
                reference = load_reference(policy, backend.precision, cpu)
                history, start = [], time.perf_counter()
                for _ in range(steps):
                    history.append(train_step(backend, get_objective(name), {}, reference, examples, list(range(len(examples))), kind,
                                              0, fpa, MicroBatching.of(learner), learner.max_length, precomputed=False))
                seconds = (time.perf_counter() - start) / steps
                rows.append(
                    {
                        "objective": name,
                        "fpa": f"lam={lam}" if fpa.enabled else "off",
                        "loss": history[-1]["loss"],
                        "C_w": sum(h["C_w"] for h in history) / steps,
                        "C_l": sum(h["C_l"] for h in history) / steps,
                        "d_logp_chosen": history[-1]["logp_chosen"] - history[0]["logp_chosen"],
                        "d_logp_rejected": history[-1]["logp_rejected"] - history[0]["logp_rejected"],
                        "ms_per_step": 1000 * seconds,
                    }
                )
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    """A fixed-width text table of `rows` (all rows share the first row's keys)."""
    keys = list(rows[0])
    cells = [[f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)
