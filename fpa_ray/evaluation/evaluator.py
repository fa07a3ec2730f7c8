"""Scoring policies: k samples per problem at the evaluation's settings, graded, scored.

One evaluator for every path that scores a policy: a run's evaluations (the offline pipeline's
start and rounds, the GRPO pipeline's start and snapshots, each into `eval_<label>/` of its run)
and `evaluate --benchmarks` (one checkpoint, a directory per benchmark: harness.py). The policies
of one call are sampled in one generate stage (one sampler pool, each policy's weights loaded in
place) and graded in one verify stage; every evaluation of a run samples with the same seeds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fpa_ray.config import RunConfig, SamplerConfig, VerifierConfig
from fpa_ray.data.sources import PromptRow
from fpa_ray.evaluation.scoring import score, score_by_benchmark
from fpa_ray.pool_stages import PoolStages, prompts
from fpa_ray.run_directory import RunDirectory


def evaluation_sampler(config: RunConfig, max_new_tokens: int | None = None) -> SamplerConfig:
    """The run's sampler pool with the evaluation's sampling settings (a benchmark may set its own length)."""
    evaluation = config.evaluation
    return config.sampler.model_copy(update={
        "n": evaluation.samples, "temperature": evaluation.temperature, "top_p": evaluation.top_p,
        "max_new_tokens": max_new_tokens or evaluation.max_new_tokens, "engine": evaluation.engine,
    })


class Evaluator:
    def __init__(self, run: RunDirectory):
        self.run, self.stages = run, PoolStages(run)

    def sample(self, label, parts: list[tuple[Path, Path]], rows: list[PromptRow], sampler: SamplerConfig | None = None,
               template: str | None = None) -> None:
        """Each (policy, directory) of `parts` sampled into `<directory>/samples`, in one stage."""
        self.stages.generate_many(label, [(policy, directory / "samples") for policy, directory in parts], rows, sampler or evaluation_sampler(self.run.config),
                                  stage="eval_generate", seed=self.run.config.seed, template=template)

    def grade(self, label, directories: list[Path], verifier: VerifierConfig | None = None, strict: bool = True) -> list[pd.DataFrame]:
        """Each directory's samples graded into `<directory>/verified`, in one stage; the verdicts of each,
        in prompt and sample order."""
        verified = self.stages.verify_many(label, [(d / "samples", d / "verified") for d in directories], stage="eval_verify",
                                           verifier=verifier, strict=strict)
        return [pd.read_parquet(v / "data").sort_values(["prompt_id", "sample_index"], kind="stable") for v in verified]

    def evaluate_many(self, evaluations: list[tuple[object, Path]]) -> list[dict]:
        """Score each (label, policy) of a run on its data.eval into `eval_<label>/`: those still to do in
        one generate and one verify stage; the score per benchmark too where data.eval has several."""
        run = self.run
        config = run.config
        results, todo = {}, []
        for label, policy in evaluations:
            stage_dir = run.path / f"eval_{label}"
            inputs = {"policy": str(policy), "evaluation": config.evaluation.model_dump(), "eval": [s.model_dump() for s in config.data.eval],
                      "verifier": config.verifier.model_dump()}
            done = run.done(stage_dir, inputs)
            if done:
                results[label] = done["score"]
            else:
                todo.append((label, policy, stage_dir, inputs))
        if not todo:
            return [results[label] for label, _ in evaluations]
        per_benchmark = {source.benchmark: prompts(run, [source]) for source in config.data.eval}
        round_label = todo[0][0] if len(todo) == 1 else ",".join(str(label) for label, *_ in todo)  # the ledger's round
        self.sample(round_label, [(policy, stage_dir) for _, policy, stage_dir, _ in todo], [row for rows in per_benchmark.values() for row in rows])
        frames = self.grade(round_label, [stage_dir for _, _, stage_dir, _ in todo])
        for (label, policy, stage_dir, inputs), frame in zip(todo, frames):
            result = score(frame)
            run.log(f"[evaluate] {policy}: pass@1 {result['pass_at_1']:.1%} over {result['problems']} problems x {result['samples_per_problem']}")
            if len(per_benchmark) > 1:  # a dev split to choose on and a test split to report on are kept apart
                result["benchmarks"] = score_by_benchmark(frame, {name: {row.id for row in rows} for name, rows in per_benchmark.items()})
                run.log("  " + ", ".join(f"{name} {b['pass_at_1']:.1%}" for name, b in result["benchmarks"].items()))
            run.finish(stage_dir, "evaluation", inputs, score=result)
            results[label] = result
        return [results[label] for label, _ in evaluations]
