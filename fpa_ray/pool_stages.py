"""The stages every pipeline shares, each writing into a run directory and charging its ledger:
the starting policy, the prompts, generation on the sampler pool and grading on the verifier pool.

Generation and grading take several targets at once, so that a run's evaluation of many policies
(the start with round 1's, GRPO's snapshots) holds one sampler pool (new weights loaded in place)
and one verifier pool instead of one of each per policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fpa_ray import metrics
from fpa_ray.config import PromptSourceConfig, SamplerConfig, VerifierConfig
from fpa_ray.data.sources import PromptRow, load_prompts
from fpa_ray.node_loss import rerun_on_node_loss
from fpa_ray.run_directory import RunDirectory


def manifest_digest(stage_dir: Path) -> str:
    """What a later stage records of an earlier one it was made from: its manifest's hash."""
    return hashlib.sha256((stage_dir / "manifest.json").read_bytes()).hexdigest()[:16]


def starting_policy(run: RunDirectory) -> Path:
    """The starting policy: a local directory, a Hub snapshot, or the warm-started tiny model."""
    from fpa_ray.warmstart import warm_start

    config = run.config
    name = config.policy.name_or_path
    if name != "tiny":
        if Path(name).is_dir():
            return Path(name).resolve()
        from huggingface_hub import snapshot_download  # into HF_HOME: a shared volume on clusters

        with run.ledger.stage("download", 0, cpus=1):
            return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    with run.ledger.stage("warmstart", 0, cpus=os.cpu_count() or 1):
        result = warm_start(config.policy.tiny, config.policy.sft, config.data.synthetic, seed=config.seed, log=run.log)
    run.log(f"[warmstart] tiny policy {'reused from cache' if result.cached else 'trained'}: {result.path}")
    return result.path


def prompts(run: RunDirectory, sources: list[PromptSourceConfig]) -> list[PromptRow]:
    """The rows of every source, in order; malformed rows a source may skip are logged."""
    config, rows = run.config, []
    for source in sources:
        loaded = load_prompts(source, config.data.synthetic, config.seed)
        if loaded.skipped:
            run.log(f"[prompts] {source.name}: skipped {len(loaded.skipped)} malformed rows, first: {loaded.skipped[0]}")
        rows.extend(loaded.rows)
    return rows


class PoolStages:
    """Generate and verify for a run directory: each call one pool for all of its targets."""

    def __init__(self, run: RunDirectory):
        self.run = run

    def generate_many(self, round_label, parts: list[tuple[Path, Path]], prompts: list[PromptRow], sampler: SamplerConfig | None = None,
                      stage: str = "generate", seed: int | None = None, template: str | None = None) -> list[Path]:
        """Sample every (policy, stage directory) of `parts` in one stage: one actor pool, new weights in place.
        A directory whose manifest is complete is kept; one cut short keeps its finished shards."""
        from fpa_ray.sampler.stage import GenerateStage, Target, timing_summary

        run, config = self.run, self.run.config
        sampler = sampler or config.sampler
        manifests = {d: json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").exists() else {} for _, d in parts}
        for _, stage_dir in parts:
            if manifests[stage_dir].get("complete"):
                run.log(f"[{run.name(stage_dir)}] done earlier: reusing it")
        todo = [(policy, d) for policy, d in parts if not manifests[d].get("complete")]
        if todo:
            for policy, _ in todo:
                run.log(f"[{stage}] {len(prompts)} prompts x {sampler.n} samples from {policy}")
            resources = {"cpus": sampler.num_actors * sampler.cpus_per_actor, "gpus": sampler.num_actors * sampler.gpus_per_actor}
            before = sum(shard["rows"] for _, d in todo for shard in manifests[d].get("shards", {}).values())  # a resumed stage's finished shards
            generate = GenerateStage(sampler, template or config.data.template, config.seed + round_label if seed is None else seed)
            with run.ledger.stage(stage, round_label, **resources):
                done = rerun_on_node_loss(lambda: generate.run_many(
                    prompts, [Target(policy, d) for policy, d in todo],
                    on_shard_done=lambda t, s, d, n: run.log(f"  [{stage}] {run.name(todo[t][1])}: shard {d}/{n} written"),
                    name=f"{config.name}-{stage}-{round_label}",
                ), sampler.max_failures, run.log, stage)
            metrics.samples_generated(config.name, stage, sum(m["rows"] for m in done) - before)
            run.log(f"[{stage}] {' + '.join(str(m['rows']) for m in done)} samples; {timing_summary(done)}")
        return [d for _, d in parts]

    def verify_many(self, round_label, parts: list[tuple[Path, Path]], stage: str = "verify", verifier: VerifierConfig | None = None,
                    strict: bool = True) -> list[Path]:
        """Grade every (samples directory, stage directory) of `parts` in one stage: one verifier pool.
        Each stage directory gets `data/` (the samples with their verdicts) and its manifest. With
        `strict`, a part with more failed verdicts than verifier.max_failure_share raises once every
        part is written; otherwise it is logged (an evaluation's numbers are still the model's)."""
        import pyarrow as pa

        from fpa_ray.sampler.stage import read_samples
        from fpa_ray.verifier.graders import grader_version
        from fpa_ray.verifier.stage import VerificationReport, VerifyStage

        run = self.run
        verifier = verifier or run.config.verifier
        inputs = {d: {"samples": manifest_digest(samples), "verifier": verifier.model_dump()} for samples, d in parts}
        todo = [(samples, d) for samples, d in parts if not run.done(d, inputs[d])]
        if not todo:
            return [d for _, d in parts]
        reports = {}

        def grade():
            datasets = [read_samples(samples) for samples, _ in todo]
            if len(todo) > 1:  # one pool for all: tag each part's rows, split them again after grading
                datasets = [ds.map_batches(lambda t, i=i: t.append_column("part", pa.array([i] * t.num_rows, pa.int32())),
                                           batch_format="pyarrow") for i, ds in enumerate(datasets)]
            return VerifyStage(verifier)(datasets[0].union(*datasets[1:]) if len(todo) > 1 else datasets[0],
                                         name=f"{run.config.name}-{stage}-{round_label}").materialize()

        with run.ledger.stage(stage, round_label, cpus=verifier.num_actors * verifier.workers_per_actor):
            verified = rerun_on_node_loss(grade, verifier.max_failures, run.log, stage)  # nothing is written before it is all graded
            for i, (_, stage_dir) in enumerate(todo):
                part = verified.filter(expr=f"part == {i}").drop_columns(["part"]).materialize() if len(todo) > 1 else verified
                shutil.rmtree(stage_dir, ignore_errors=True)
                part.write_parquet(str(stage_dir / "data"))
                reports[stage_dir] = VerificationReport.from_dataset(part)
        for _, stage_dir in todo:
            report = reports[stage_dir]
            metrics.verdicts(run.config.name, report.by_status)
            run.log(f"[{stage}] {report.summary()}")
            run.finish(stage_dir, "verified", inputs[stage_dir], checks=report.checks, by_status=report.by_status, fallbacks=report.fallbacks,
                       p50_seconds=report.p50_seconds, p99_seconds=report.p99_seconds,
                       graders=[grader_version(g) for g in (verifier.grader, verifier.cross_grader) if g])
        for _, stage_dir in todo:
            if strict:
                reports[stage_dir].raise_if_unhealthy(verifier.max_failure_share)
            elif reports[stage_dir].failure_share > verifier.max_failure_share:
                run.log(f"[{stage}] WARNING {run.name(stage_dir)}: {reports[stage_dir].failure_share:.0%} of verdicts unparseable/timeout/"
                        "error; check the template")
        return [d for _, d in parts]
