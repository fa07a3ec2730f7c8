"""From verified samples to training rows (docs/method.md section 6), in TRL's columns plus token ids.

Pairs: per prompt, every (correct, incorrect) combination, shuffled with a seed derived from the
run seed and the prompt id, capped at `pairs_per_prompt`. Prompts whose samples are all correct
or all incorrect give no pair and are counted. With `rejected_cut="divergence"` the rejected
response is cut a few tokens after the first token where it departs from the chosen one, so the
pair differs only at the first wrong step: the valid steps an incorrect response goes on with
(often correct arithmetic on a wrong number) are no longer pushed down. Unpaired rows (KTO, offline RL, REINFORCE): every
sample of the prompts with both outcomes, labelled by its reward. A sample with reward 0
(incorrect, unparseable, timeout or error) is an incorrect response.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Sequence

import pandas as pd

PAIR_COLUMNS = [
    "prompt_id", "prompt", "answer", "chosen", "rejected", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids",
    "chosen_sample_index", "rejected_sample_index",
]
UNPAIRED_COLUMNS = ["prompt_id", "prompt", "answer", "completion", "label", "prompt_token_ids", "completion_token_ids", "sample_index"]


def _rng(seed: int, prompt_id: str) -> random.Random:
    return random.Random(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest())


def _group_outcomes(samples: pd.DataFrame, counts: Counter):
    for prompt_id, group in samples.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True):
        counts["prompts"] += 1
        correct, incorrect = group[group["reward"] > 0], group[group["reward"] <= 0]
        if incorrect.empty:
            counts["prompts_all_correct"] += 1
            continue
        if correct.empty:
            counts["prompts_all_incorrect"] += 1
            continue
        counts["prompts_mixed"] += 1
        yield prompt_id, correct, incorrect


def cut_at_divergence(chosen: Sequence[int], rejected: Sequence[int], keep: int) -> list[int]:
    """`rejected` up to its first token that differs from `chosen`, plus `keep` tokens from there."""
    shared = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    return list(rejected[: shared + keep])


def build_pairs(
    samples: pd.DataFrame, pairs_per_prompt: int, seed: int, rejected_cut: str = "none", divergence_tokens: int = 4,
    decode: Callable[[list[int]], str] | None = None,
) -> tuple[pd.DataFrame, Counter]:
    """Correct-over-incorrect pairs and the count at each filter; `decode` turns a cut rejected response back into text."""
    if rejected_cut not in ("none", "divergence"):
        raise ValueError(f"rejected_cut must be 'none' or 'divergence', got {rejected_cut!r}")
    if rejected_cut == "divergence" and decode is None:
        raise ValueError("rejected_cut='divergence' needs decode (the policy's tokenizer) for the rejected text")
    counts: Counter = Counter(samples=len(samples))
    rows = []
    for prompt_id, correct, incorrect in _group_outcomes(samples, counts):
        combos = [(c, i) for c in correct.itertuples() for i in incorrect.itertuples()]
        counts["pairs_possible"] += len(combos)
        _rng(seed, prompt_id).shuffle(combos)
        for chosen, rejected in combos[:pairs_per_prompt]:
            rejected_ids, rejected_text = list(rejected.response_token_ids), rejected.response
            if rejected_cut == "divergence":
                cut = cut_at_divergence(list(chosen.response_token_ids), rejected_ids, divergence_tokens)
                counts["rejected_tokens_cut"] += len(rejected_ids) - len(cut)
                rejected_ids, rejected_text = cut, decode(cut)
            rows.append({
                "prompt_id": prompt_id, "prompt": chosen.prompt, "answer": chosen.answer,
                "chosen": chosen.response, "rejected": rejected_text,
                "prompt_token_ids": list(chosen.prompt_token_ids), "chosen_token_ids": list(chosen.response_token_ids),
                "rejected_token_ids": rejected_ids,
                "chosen_sample_index": int(chosen.sample_index), "rejected_sample_index": int(rejected.sample_index),
            })
    counts["pairs"] = len(rows)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), counts


def build_unpaired(samples: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, Counter]:
    """Labelled samples of the prompts with both outcomes, and the count at each filter."""
    counts: Counter = Counter(samples=len(samples))
    rows = []
    for prompt_id, correct, incorrect in _group_outcomes(samples, counts):
        for sample in pd.concat([correct, incorrect]).sort_values("sample_index").itertuples():
            rows.append({
                "prompt_id": prompt_id, "prompt": sample.prompt, "answer": sample.answer, "completion": sample.response,
                "label": bool(sample.reward > 0), "prompt_token_ids": list(sample.prompt_token_ids),
                "completion_token_ids": list(sample.response_token_ids), "sample_index": int(sample.sample_index),
            })
    counts["rows"] = len(rows)
    counts["desirable"] = sum(r["label"] for r in rows)
    return pd.DataFrame(rows, columns=UNPAIRED_COLUMNS), counts


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 over the token-id columns in row order."""
    digest = hashlib.sha256()
    columns = [c for c in frame.columns if c.endswith("token_ids")] + [c for c in ("label",) if c in frame.columns]
    for values in frame[columns].itertuples(index=False):
        digest.update(repr([list(v) if hasattr(v, "__len__") else v for v in values]).encode())
    return digest.hexdigest()
