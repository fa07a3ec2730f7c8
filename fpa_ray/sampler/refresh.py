"""Weight refresh for the online loop, and the probe that proves the new weights arrived.

`refresh_weights` loads a checkpoint into a live engine (vLLM: reload_weights + prefix-cache
reset; transformers: load_state_dict) and then compares the engine's log-probs of a fixed
continuation with the learner's (a transformers forward pass on the same checkpoint). A refresh
that silently kept the old weights, or loaded them wrongly, fails here rather than skewing the
next rollouts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fpa_ray.sampler.engines import Engine, SamplerError

PROBE_PROMPT = "Start with 12. Add 30, then multiply by 2. What is the result?\n"
PROBE_CONTINUATION = "12 + 30 = 42. 42 * 2 = 84. \\boxed{84}"


def learner_logprobs(checkpoint: Path, prompt_ids: list[int], continuation: list[int]) -> list[float]:
    """Log-probs of `continuation` under the checkpoint as the learner computes them (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + continuation])).logits[0, len(prompt_ids) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(continuation).unsqueeze(-1)).squeeze(-1).tolist()


def probe_gap(engine: Engine, checkpoint: Path) -> float:
    """Largest |engine - learner| log-prob over the probe continuation's tokens."""
    tokenizer = engine.tokenizer
    prompt_ids = tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
    continuation = tokenizer(PROBE_CONTINUATION, add_special_tokens=False)["input_ids"]
    ours = engine.continuation_logprobs(prompt_ids, continuation)
    theirs = learner_logprobs(checkpoint, prompt_ids, continuation)
    return max(abs(a - b) for a, b in zip(ours, theirs))


def refresh_weights(engine: Engine, checkpoint: Path, tolerance: float = 1e-3) -> float:
    """Load `checkpoint` into the live engine and check it against the learner; returns the gap."""
    engine.load_weights(checkpoint)
    gap = probe_gap(engine, checkpoint)
    if gap > tolerance:
        raise SamplerError(
            f"after loading {checkpoint} the engine's log-probs differ from the learner's by {gap:.2e} (> {tolerance:.0e}): "
            "the refresh did not take"
        )
    return gap
