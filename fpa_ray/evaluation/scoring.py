"""Scoring an evaluation: pass@1 averaged over k samples, pass@k, maj@k, cross-grader disagreement,
Total Gain / Total Loss, and the paired difference of two evaluations with its standard error.

Total Gain / Total Loss (docs/method.md section 8) compare two evaluations problem by problem: a
problem counts as solved when its pass@1 over the k samples reaches `solved_threshold` (0.5 by
default, [project choice]); gained = solved after but not before, lost = the reverse.
"""

from __future__ import annotations

import math

import pandas as pd


def score(verified: pd.DataFrame) -> dict:
    """Overall pass@1 (mean over problems of the mean reward), pass@k, and per-problem pass@1.

    With the verifier's `extracted` and `status` columns also majority-vote accuracy (maj@k: the
    most frequent extracted answer of a problem, ties to the one seen first, is graded by its
    verdict; a problem with no extracted answer counts as wrong) and the share of verdicts that are
    unparseable, timeout or error; with `response_token_ids`, the mean response length in tokens;
    with a cross grader's `cross_reward`, its pass@1 and the number of samples the graders disagree on.
    """
    per_problem = verified.groupby("prompt_id", sort=True)["reward"].agg(["mean", "max", "count"])
    result = {
        "problems": int(len(per_problem)),
        "samples_per_problem": int(per_problem["count"].min()) if len(per_problem) else 0,
        "pass_at_1": float(per_problem["mean"].mean()) if len(per_problem) else 0.0,
        "pass_at_k": float(per_problem["max"].mean()) if len(per_problem) else 0.0,
        "per_problem": {str(k): float(v) for k, v in per_problem["mean"].items()},
    }
    if {"extracted", "status"} <= set(verified.columns) and len(per_problem):
        result["maj_at_k"] = float(sum(_majority_correct(group) for _, group in verified.groupby("prompt_id")) / len(per_problem))
        result["failure_share"] = float(verified["status"].isin(["unparseable", "timeout", "error"]).mean())
    if "response_token_ids" in verified.columns and len(verified):
        result["mean_response_tokens"] = float(verified["response_token_ids"].map(len).mean())
    if "cross_reward" in verified.columns and len(per_problem):
        result["cross_pass_at_1"] = float(verified.groupby("prompt_id", sort=True)["cross_reward"].mean().mean())
        result["disagreements"] = int((verified["reward"] != verified["cross_reward"]).sum())
    return result


def score_by_benchmark(verified: pd.DataFrame, benchmarks: dict[str, set[str]]) -> dict[str, dict]:
    """`score` of each benchmark's own rows (benchmark label -> its prompt ids), so that a run evaluated
    on several (a dev split to choose on, a test split to report) keeps them apart."""
    return {label: score(verified[verified["prompt_id"].isin(ids)]) for label, ids in benchmarks.items()}


def disagreements(verified: pd.DataFrame) -> pd.DataFrame:
    """The samples whose primary and cross grader verdicts differ in correctness."""
    if "cross_reward" not in verified.columns:
        raise ValueError("no cross_reward column: grade with verifier.cross_grader set to compare graders")
    return verified[verified["reward"] != verified["cross_reward"]]


OVERALL_KEYS = ("pass_at_1", "pass_at_k", "maj_at_k", "mean_response_tokens", "failure_share", "cross_pass_at_1")


def overall(scores: dict[str, dict]) -> dict:
    """Across benchmarks: each metric's unweighted mean over the benchmarks that report it (a paper's
    "Avg." column), and the total number of problems and disagreements."""
    result: dict = {"benchmarks": len(scores), "problems": sum(s["problems"] for s in scores.values())}
    for key in OVERALL_KEYS:
        values = [s[key] for s in scores.values() if s.get(key) is not None]
        if values:
            result[key] = sum(values) / len(values)
    if any("disagreements" in s for s in scores.values()):
        result["disagreements"] = sum(s.get("disagreements", 0) for s in scores.values())
    return result


def _majority_correct(samples: pd.DataFrame) -> bool:
    answered = samples[samples["extracted"].notna() & (samples["extracted"] != "")]
    if answered.empty:
        return False
    counts = answered["extracted"].value_counts(sort=False)  # first-seen order, so ties go to the first
    winner = counts.idxmax()
    return bool(answered.loc[answered["extracted"] == winner, "reward"].iloc[0] == 1.0)


def total_gain_loss(before: dict[str, float], after: dict[str, float], solved_threshold: float = 0.5) -> dict:
    """Problems newly solved (gained) and newly failed (lost) between two per-problem pass@1 maps."""
    common = sorted(set(before) & set(after))
    gained = [p for p in common if after[p] >= solved_threshold > before[p]]
    lost = [p for p in common if before[p] >= solved_threshold > after[p]]
    return {"total_gain": len(gained), "total_loss": len(lost), "gained": gained, "lost": lost, "compared": len(common)}


def paired_difference(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean over the problems both evaluated of after - before per-problem pass@1, and its standard
    error over problems (sample std / sqrt(n)): the same problems on both sides, so their difficulty
    cancels and what is left is the change plus sampling noise. A change of 2 SE is the smallest an
    evaluation of this size resolves."""
    common = sorted(set(before) & set(after))
    diffs = [after[p] - before[p] for p in common]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else float("nan")
    return {"difference": mean, "se": se, "problems": n}
