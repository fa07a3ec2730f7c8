"""The verify stage: a Ray Data actor pool that adds verdict columns to a dataset of responses.

Input columns `answer` (gold) and `response`; output adds `reward` (1.0/0.0), `status`,
`extracted`, `grader`, `verify_seconds`, `verify_detail`, and with a cross grader `cross_status`,
`cross_reward` and `cross_extracted`. Each actor owns a GradingPool (its own worker processes with a hard limit per
check). Ray Data restarts a killed actor and retries its batch, and a batch's rows are emitted only
when the whole batch is graded, so every row gets exactly one verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from fpa_ray.config import VerifierConfig
from fpa_ray.verifier.pool import FALLBACK_MARK, STATUSES, GradingPool

FAILURE_STATUSES = ("unparseable", "timeout", "error")


class VerifierHealthError(RuntimeError):
    """Too many checks failed to produce a verdict: a broken grader or prompt template, not a bad model."""


class VerifierActor:
    """map_batches callable: grades one batch in this actor's grading pool(s)."""

    def __init__(self, config: VerifierConfig):
        self.pool = GradingPool(config.grader, config.workers_per_actor, config.timeout_s, config.memory_limit_mb)
        self.cross = (
            GradingPool(config.cross_grader, config.workers_per_actor, config.timeout_s, config.memory_limit_mb)
            if config.cross_grader
            else None
        )

    def __del__(self):
        # Ray Data deletes the UDF on a graceful actor exit: stop the grading processes with it.
        for pool in (getattr(self, "pool", None), getattr(self, "cross", None)):
            if pool is not None:
                pool.close()

    def grade(self, batch: pa.Table) -> pa.Table:
        """The same as calling the actor: the method name a long-lived Ray actor (the online loop) calls."""
        return self(batch)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Arrow in, Arrow out: list columns (token ids) keep their list type instead of becoming tensors.
        pairs = list(zip(batch.column("answer").to_pylist(), batch.column("response").to_pylist()))
        verdicts = self.pool.grade(pairs)
        columns = {
            "reward": pa.array([v.reward for v in verdicts], pa.float64()),
            "status": pa.array([v.status for v in verdicts], pa.string()),
            "extracted": pa.array([v.extracted for v in verdicts], pa.string()),
            "grader": pa.array([v.grader for v in verdicts], pa.string()),
            "verify_seconds": pa.array([v.seconds for v in verdicts], pa.float64()),
            "verify_detail": pa.array([v.detail for v in verdicts], pa.string()),
        }
        if self.cross is not None:
            cross = self.cross.grade(pairs)
            columns["cross_status"] = pa.array([v.status for v in cross], pa.string())
            columns["cross_reward"] = pa.array([v.reward for v in cross], pa.float64())
            columns["cross_extracted"] = pa.array([v.extracted for v in cross], pa.string())
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch


class VerifyStage:
    """Dataset of responses in, dataset with verdicts out (lazy: runs when consumed)."""

    def __init__(self, config: VerifierConfig):
        self.config = config

    def __call__(self, dataset, name: str = "verify"):
        import ray

        verified = dataset.map_batches(
            VerifierActor,
            fn_constructor_kwargs={"config": self.config},
            batch_size=self.config.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.config.num_actors),
            num_cpus=self.config.workers_per_actor,  # the grading processes do the work
            resources=self.config.resources,
        )
        verified.set_name(name)  # the Ray Data panel of the dashboard lists it by this name
        return verified


@dataclass
class VerificationReport:
    """Per-run counters of the verify stage."""

    checks: int
    by_status: dict[str, int] = field(default_factory=dict)
    p50_seconds: float = 0.0
    p99_seconds: float = 0.0
    fallbacks: int = 0  # verdicts the fallback grader gave because the configured one's library raised

    @classmethod
    def from_columns(cls, status: np.ndarray, seconds: np.ndarray, detail: np.ndarray | None = None) -> VerificationReport:
        counts = {s: int((status == s).sum()) for s in STATUSES}
        unknown = set(status.tolist()) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown verdict status(es) {sorted(unknown)}")
        graded = seconds[status != "unparseable"] if (status != "unparseable").any() else np.zeros(1)
        fallbacks = 0 if detail is None else sum(str(d).startswith(FALLBACK_MARK) for d in detail)
        return cls(len(status), counts, float(np.percentile(graded, 50)), float(np.percentile(graded, 99)), fallbacks)

    @classmethod
    def from_dataset(cls, dataset) -> VerificationReport:
        table = dataset.select_columns(["status", "verify_seconds", "verify_detail"]).to_pandas()
        return cls.from_columns(
            table["status"].to_numpy(dtype=object), table["verify_seconds"].to_numpy(), table["verify_detail"].to_numpy(dtype=object)
        )

    @property
    def failure_share(self) -> float:
        return sum(self.by_status.get(s, 0) for s in FAILURE_STATUSES) / self.checks if self.checks else 0.0

    def raise_if_unhealthy(self, max_failure_share: float) -> None:
        """Fail loudly when unparseable + timeout + error exceed the configured share."""
        if self.checks and self.failure_share > max_failure_share:
            raise VerifierHealthError(
                f"{self.failure_share:.0%} of {self.checks} checks ended unparseable/timeout/error "
                f"(limit {max_failure_share:.0%}): {self.by_status}. Check the grader and the prompt template "
                "(does it ask for \\boxed{}?) before blaming the model."
            )

    def summary(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in self.by_status.items())
        return (
            f"{self.checks} checks: {counts}; {self.fallbacks} by the fallback grader; "
            f"p50 {1000 * self.p50_seconds:.1f} ms, p99 {1000 * self.p99_seconds:.1f} ms"
        )
