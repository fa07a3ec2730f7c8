"""The offline FPA pipeline: warm start, then rounds of generate -> verify -> build -> train, with
an evaluation of the starting policy and of every round's policy (the start with round 1's, in
the same sampler and verifier pools, as the GRPO pipeline evaluates its start with its snapshots).

Run directory `<output_dir>/<name>/` (fpa_ray.run_directory: what a rerun skips, resumes or
refuses): `config.yaml` (resolved), `ledger.jsonl`, `report.md`, `curve.json`, `eval_0/`, and per
round `round_<r>/{samples,verified,dataset,train}` and `eval_<r>/`.
"""

from __future__ import annotations

import json
from pathlib import Path

from fpa_ray.compare import evaluations_since_best
from fpa_ray.config import RunConfig
from fpa_ray.data.builder import build_pairs, build_unpaired, content_hash
from fpa_ray.evaluation.evaluator import Evaluator
from fpa_ray.evaluation.run_report import cost_point, write_run_report
from fpa_ray.learner.worker_records import SNAPSHOTS_DIR
from fpa_ray.objectives import PairedBatch, get_objective
from fpa_ray.pool_stages import PoolStages, manifest_digest, prompts, starting_policy
from fpa_ray.run_directory import RunDirectory


class OfflinePipeline:
    """Rounds of generate -> verify -> build -> train on one run directory, each round's policy evaluated."""

    def __init__(self, config: RunConfig, log=print):
        self.config, self.log = config, log
        self.run_directory = RunDirectory.of(config, log)
        self.run_dir, self.ledger = self.run_directory.path, self.run_directory.ledger
        self.stages, self.evaluator = PoolStages(self.run_directory), Evaluator(self.run_directory)

    def prepare(self) -> None:
        """Check the cluster and create the run directory, or check that it was made with the same config."""
        self.run_directory.prepare()

    # --- stages ------------------------------------------------------------------------------

    def initial_policy(self) -> Path:
        return starting_policy(self.run_directory)

    def generate(self, round_index: int, policy: Path) -> Path:
        return self.stages.generate_many(round_index, [(policy, self.run_dir / f"round_{round_index}" / "samples")],
                                         prompts(self.run_directory, [self.config.data.train]))[0]

    def verify(self, round_index: int, samples_dir: Path) -> Path:
        return self.stages.verify_many(round_index, [(samples_dir, self.run_dir / f"round_{round_index}" / "verified")])[0]

    def build(self, round_index: int, verified_dir: Path) -> Path:
        import pandas as pd

        config = self.config
        paired = get_objective(config.objective.name).batch_type is PairedBatch
        stage_dir = self.run_dir / f"round_{round_index}" / "dataset"
        inputs = {"verified": manifest_digest(verified_dir), "build": config.build.model_dump(), "paired": paired, "seed": config.seed}
        if self.run_directory.done(stage_dir, inputs):
            return stage_dir
        with self.ledger.stage("build", round_index, cpus=1):
            samples = pd.read_parquet(verified_dir / "data")
            if paired:
                build = config.build
                decode = None
                if build.rejected_cut != "none":
                    from transformers import AutoTokenizer

                    policy = json.loads((verified_dir.parent / "samples" / "manifest.json").read_text())["settings"]["checkpoint"]
                    tokenizer = AutoTokenizer.from_pretrained(policy)
                    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
                frame, counts = build_pairs(samples, build.pairs_per_prompt, config.seed + round_index, build.rejected_cut,
                                            build.divergence_tokens, decode)
            else:
                frame, counts = build_unpaired(samples, config.seed + round_index)
            stage_dir.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(stage_dir / "data.parquet", index=False)
        samples_manifest = json.loads((verified_dir.parent / "samples" / "manifest.json").read_text())
        verified_manifest = json.loads((verified_dir / "manifest.json").read_text())
        self.run_directory.finish(stage_dir, "pairs" if paired else "unpaired", inputs, rows=len(frame), counts=dict(counts),
                                  sha256=content_hash(frame), policy=samples_manifest["settings"]["policy"],
                                  sampling=samples_manifest["settings"]["sampling"], graders=verified_manifest["graders"], seed=config.seed + round_index)
        self.log(f"[build] {len(frame)} {'pairs' if paired else 'rows'}: {dict(counts)}")
        if frame.empty:
            raise RuntimeError(f"round {round_index} produced no training rows ({dict(counts)}): every prompt was all-correct or all-wrong")
        return stage_dir

    def train(self, round_index: int, dataset_dir: Path, policy: Path) -> Path:
        from fpa_ray.datasets import read_parquet
        from fpa_ray.learner.worker_group import TrainStage

        config = self.config
        stage_dir = self.run_dir / f"round_{round_index}" / "train"
        inputs = {
            "dataset": manifest_digest(dataset_dir), "policy": str(policy), "learner": config.learner.model_dump(),
            "objective": config.objective.model_dump(), "fpa": config.fpa.model_dump(), "seed": config.seed,
        }
        if self.run_directory.done(stage_dir, inputs):
            return stage_dir / "policy"
        learner = config.learner
        self.log(f"[train] {config.objective.name}{' + FPA' if config.fpa.enabled else ''} on {dataset_dir / 'data.parquet'}")
        with self.ledger.stage("train", round_index, cpus=learner.num_workers * learner.cpus_per_worker, gpus=learner.num_workers * learner.gpus_per_worker):
            result = TrainStage(learner, config.objective, config.fpa, config.seed).run(
                read_parquet(dataset_dir / "data.parquet"), policy, policy, stage_dir, name=f"{config.name}-round{round_index}",
                run=config.name, tracking=self.run_directory.tracking, prefix=f"round_{round_index}/",
            )
        last = result.metrics[-1]
        self.log(f"[train] {len(result.metrics)} steps, last loss {last['loss']:.4f}, C_w {last['C_w']:.4f}, C_l {last['C_l']:.4f}")
        self.run_directory.finish(stage_dir, "train", inputs, steps=len(result.metrics), policy=str(result.checkpoint))
        return result.checkpoint

    def evaluate(self, label, policy: Path) -> dict:
        """Score `policy` into `eval_<label>/`; every evaluation of a run samples with the same seeds."""
        return self.evaluator.evaluate_many([(label, policy)])[0]

    def round_points(self, round_index: int, policy: Path, start: Path | None = None) -> list[dict]:
        """The round's snapshots (learner.snapshot_every) and its final policy, evaluated together; with
        `start`, the starting policy too (its point costs nothing), so round 1 needs no pools of its own for it."""
        train_dir = self.run_dir / f"round_{round_index}" / "train"
        metrics = {m["step"]: m for m in map(json.loads, (train_dir / "metrics.jsonl").read_text().splitlines()) if "time" in m}
        points = [] if start is None else [("start", 0, start, 0.0)]  # (point label, evaluation label, policy, moment)
        for snapshot in sorted((train_dir / SNAPSHOTS_DIR).glob("step_*"), key=lambda p: int(p.name.split("_")[1])):
            step = int(snapshot.name.split("_")[1])
            if step in metrics and step != max(metrics):
                points.append((f"round {round_index} step {step}", f"{round_index}_step_{step}", snapshot, metrics[step]["time"]))
        trained = [e["end"] for e in self.ledger.entries() if e["stage"] == "train" and e["round"] == round_index and e["completed"]]
        points.append((f"after round {round_index}", round_index, policy, max(trained, default=float("inf"))))
        results = self.evaluator.evaluate_many([(label, path) for _, label, path, _ in points])
        return [cost_point(self.ledger, name, result, moment) for (name, _, _, moment), result in zip(points, results)]

    def policy_before(self, round_index: int) -> Path:
        """The policy a round starts from: the warm start for round 1, else the previous round's."""
        if round_index <= 1:
            return self.initial_policy()
        trained = self.run_dir / f"round_{round_index - 1}" / "train" / "policy"
        if not (trained / "config.json").exists():
            raise FileNotFoundError(f"round {round_index} starts from {trained}, which does not exist yet: train round {round_index - 1} first")
        return trained

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> Path:
        """All rounds, resuming from what the run directory already holds; returns report.md."""
        self.prepare()
        policy = start = self.initial_policy()
        points = []
        for round_index in range(1, self.config.rounds + 1):
            samples = self.generate(round_index, policy)
            verified = self.verify(round_index, samples)
            dataset = self.build(round_index, verified)
            policy = self.train(round_index, dataset, policy)
            points.extend(self.round_points(round_index, policy, start=start if round_index == 1 else None))
            if round_index < self.config.rounds and self.plateaued(points):
                self.log(f"[rounds] no gain on {self.config.data.eval[0].benchmark} for {self.config.rounds_patience} round(s): "
                         f"stopping after round {round_index} of {self.config.rounds}")
                break
        return self.write_report(points)

    def plateaued(self, points: list[dict]) -> bool:
        """rounds_patience rounds in a row have not beaten the best pass@1 (the start's included) on
        the first eval benchmark; each round's final policy counts, its snapshots do not (the next
        round starts from the final one)."""
        patience = self.config.rounds_patience
        if patience is None:
            return False
        label = self.config.data.eval[0].benchmark
        ends = [p for p in points if p["point"] == "start" or p["point"].startswith("after round")]
        return evaluations_since_best([p["benchmarks"][label]["pass_at_1"] if "benchmarks" in p else p["pass_at_1"] for p in ends]) >= patience

    def describe(self) -> str:
        config = self.config
        fpa = f"on (lam={config.fpa.lam}, {config.fpa.mode}, apply_to={config.fpa.apply_to})" if config.fpa.enabled else "off"
        rounds = f"{config.rounds} round(s)" if config.rounds_patience is None else (
            f"up to {config.rounds} round(s), stopping after {config.rounds_patience} without gain on {config.data.eval[0].benchmark}")
        return f"offline, objective `{config.objective.name}` {config.objective.params}, FPA {fpa}, {rounds}, seed {config.seed}"

    def write_report(self, points: list[dict]) -> Path:
        return write_run_report(self.run_directory, self.describe(), points)
