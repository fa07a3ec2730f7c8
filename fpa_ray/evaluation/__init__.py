"""Evaluation: scoring verified samples (scoring) and the benchmark harness of `evaluate --benchmarks` (harness)."""

from fpa_ray.evaluation.scoring import disagreements, overall, paired_difference, score, score_by_benchmark, total_gain_loss

__all__ = ["disagreements", "overall", "paired_difference", "score", "score_by_benchmark", "total_gain_loss"]
