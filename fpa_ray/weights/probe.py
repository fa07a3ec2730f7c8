"""The probe that proves new weights arrived: the engine's log-probs of a fixed continuation against
the learner's. A sync that silently kept the old weights, or loaded them wrongly, stops the run here
rather than skewing the next rollouts."""

from __future__ import annotations

from pathlib import Path

import torch

PROBE_PROMPT = "Start with 12. Add 30, then multiply by 2. What is the result?\n"
PROBE_CONTINUATION = "12 + 30 = 42. 42 * 2 = 84. \\boxed{84}"


class SyncDidNotTake(RuntimeError):
    """The engine's probe log-probs are not the learner's after a weight sync."""


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


def engine_gap(engine, expected: list[float]) -> float:
    """Largest |engine - expected| log-prob over the probe continuation's tokens."""
    ours = engine.continuation_logprobs(*probe_ids(engine.tokenizer))
    if len(ours) != len(expected):
        raise SyncDidNotTake(f"the probe has {len(ours)} tokens in the engine and {len(expected)} in the learner: different tokenizers")
    return max(abs(a - b) for a, b in zip(ours, expected))


def probe_gap(engine, checkpoint: Path) -> float:
    """The gap between the engine and a float32 transformers forward of `checkpoint`."""
    return engine_gap(engine, learner_logprobs(checkpoint, *probe_ids(engine.tokenizer)))


def checked(engine, expected: list[float] | None, tolerance: float, source: str) -> float | None:
    """With `expected` (the learner's probe log-probs on the weights just loaded from `source`), the
    engine's gap to them, raising SyncDidNotTake above `tolerance`; None without."""
    if expected is None:
        return None
    gap = engine_gap(engine, expected)
    if gap > tolerance:
        raise SyncDidNotTake(
            f"after loading {source} the engine's log-probs differ from the learner's by {gap:.2e} (> {tolerance:.0e}): the sync did not take"
        )
    return gap
