"""New weights into live engines, and the probe that proves they arrived.

Three ways in, all in place (the same engine object, no restart): `receive_weights` takes the
learner's broadcast over the weight group (weight_group.py, `grpo.weight_sync=collective`),
`sync_weights` takes the learner's tensors from the Ray object store, `refresh_weights` reads a
checkpoint directory (the `grpo.weight_sync=disk` fallback).
Either way the engine's log-probs of a fixed continuation are then compared with the learner's:
a sync that silently kept the old weights, or loaded them wrongly, stops the run here rather than
skewing the next rollouts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fpa_ray.sampler.engines import Engine, SamplerError, Weights

PROBE_PROMPT = "Start with 12. Add 30, then multiply by 2. What is the result?\n"
PROBE_CONTINUATION = "12 + 30 = 42. 42 * 2 = 84. \\boxed{84}"


def probe_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the probe's prompt and continuation: the same on the learner and the engine."""
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"] for text in (PROBE_PROMPT, PROBE_CONTINUATION))


def learner_logprobs(checkpoint: Path, prompt_ids: list[int], continuation: list[int]) -> list[float]:
    """Log-probs of `continuation` under the checkpoint as the learner computes them (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + continuation])).logits[0, len(prompt_ids) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(continuation).unsqueeze(-1)).squeeze(-1).tolist()


def engine_gap(engine: Engine, expected: list[float]) -> float:
    """Largest |engine - expected| log-prob over the probe continuation's tokens."""
    ours = engine.continuation_logprobs(*probe_ids(engine.tokenizer))
    if len(ours) != len(expected):
        raise SamplerError(f"the probe has {len(ours)} tokens in the engine and {len(expected)} in the learner: different tokenizers")
    return max(abs(a - b) for a, b in zip(ours, expected))


def probe_gap(engine: Engine, checkpoint: Path) -> float:
    """The gap between the engine and a float32 transformers forward of `checkpoint`."""
    return engine_gap(engine, learner_logprobs(checkpoint, *probe_ids(engine.tokenizer)))


def _checked(gap: float, tolerance: float, source: str) -> float:
    if gap > tolerance:
        raise SamplerError(
            f"after loading {source} the engine's log-probs differ from the learner's by {gap:.2e} (> {tolerance:.0e}): the sync did not take"
        )
    return gap


def refresh_weights(engine: Engine, checkpoint: Path, tolerance: float = 1e-3) -> float:
    """Load `checkpoint` into the live engine and check it against the learner; returns the gap."""
    engine.load_weights(checkpoint)
    return _checked(probe_gap(engine, checkpoint), tolerance, str(checkpoint))


def sync_weights(engine: Engine, weights: Weights, expected: list[float] | None, tolerance: float = 1e-3) -> float | None:
    """Load the learner's tensors into the live engine; with `expected` (the learner's probe
    log-probs on those weights), check them and return the gap."""
    engine.update_weights(weights)
    if expected is None:
        return None
    return _checked(engine_gap(engine, expected), tolerance, "the learner's weights")


def receive_weights(engine: Engine, group: str, tensors: list, expected: list[float] | None, tolerance: float = 1e-3) -> float | None:
    """Receive the learner's broadcast of `tensors` (their specs) over `group` into the live engine;
    with `expected`, check it as sync_weights does."""
    engine.receive_weights(group, tensors)
    if expected is None:
        return None
    return _checked(engine_gap(engine, expected), tolerance, "the learner's broadcast weights")
