"""Which policy sampled a GRPO rollout: the largest gap between its first sample's recorded log-probs
(T=1, top_p=1: the model's own) and those two policies give the same tokens."""

from pathlib import Path

import pandas as pd

from fpa_ray.weights.probe import learner_logprobs


def sampled_gaps(run_dir: Path, step: int, policy: Path, other: Path) -> tuple[float, float]:
    """(max gap to `policy`, max gap to `other`) over rollout `step`'s first sample's tokens."""
    row = pd.read_parquet(run_dir / "online" / "rollouts" / f"step-{step:05d}.parquet").iloc[0]
    prompt, response, sampled = list(row["prompt_token_ids"]), list(row["response_token_ids"]), row["response_logprobs"]
    return tuple(max(abs(a - b) for a, b in zip(sampled, learner_logprobs(p, prompt, response))) for p in (policy, other))
