"""The offline FPA pipeline: warm start, then rounds of generate -> verify -> build -> train, with
an evaluation of the starting policy and of every round's policy (the start with round 1's, in
the same sampler and verifier pools, as the GRPO pipeline evaluates its start with its snapshots).

Run directory `<output_dir>/<name>/`: `config.yaml` (resolved), `ledger.jsonl`, `report.md`,
`eval_0/`, and per round `round_<r>/{samples,verified,dataset,train}` and `eval_<r>/`. Every stage
writes a `manifest.json` with its inputs; a rerun with the same name skips a stage whose manifest
is complete and whose inputs are the same, resumes one that was cut short (generation keeps its
finished shards), and refuses one whose recorded inputs differ from the current ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fpa_ray import metrics
from fpa_ray.accounting import NOT_TRAINING, Ledger
from fpa_ray.compare import evaluations_since_best
from fpa_ray.config import RunConfig, SamplerConfig
from fpa_ray.data.builder import build_pairs, build_unpaired, content_hash
from fpa_ray.data.sources import PromptRow, load_prompts
from fpa_ray.evaluation import paired_difference, score, score_by_benchmark, total_gain_loss
from fpa_ray.learner.worker_records import SNAPSHOTS_DIR
from fpa_ray.objectives import PairedBatch, get_objective
from fpa_ray.placement import check_fit, cluster_nodes
from fpa_ray.run_files import write_json
from fpa_ray.tracking import TrackingRun, check_installed


class StageInputsChanged(RuntimeError):
    """A finished stage in the run directory was made from other inputs than this run's."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def curve_point(point: dict, start: dict) -> dict:
    """A point of curve.json: its scores and hours without the per-problem maps; per benchmark also
    the paired difference from the start and its standard error (what a comparison across runs needs)."""
    result = {k: v for k, v in point.items() if k not in ("per_problem", "benchmarks")}
    if "benchmarks" in point:
        result["benchmarks"] = {}
        for label, bench in point["benchmarks"].items():
            paired = paired_difference(start["benchmarks"][label]["per_problem"], bench["per_problem"])
            result["benchmarks"][label] = {"pass_at_1": bench["pass_at_1"], "pass_at_k": bench["pass_at_k"],
                                           "vs_start": paired["difference"], "vs_start_se": paired["se"], "problems": paired["problems"]}
    return result


class OfflinePipeline:
    def __init__(self, config: RunConfig, log=print):
        self.config, self.log = config, log
        self.run_dir = (config.output_dir / config.name).resolve()
        self.ledger = Ledger(self.run_dir / "ledger.jsonl", run=config.name)
        self._tracking: TrackingRun | None = None

    # --- bookkeeping -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the run directory or check that it was made with the same config."""
        from fpa_ray.cluster import init_ray, link_logs

        init_ray()
        for problem in check_fit(self.config, cluster_nodes()):  # raises unless fit_check=warn, before anything is written
            self.log(f"[ray] warning: {problem} (fit_check=warn: going on, waiting for nodes)")
        check_installed(self.config.tracking)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        saved = self.run_dir / "config.yaml"
        text = self.config.to_yaml()
        if saved.exists() and saved.read_text() != text:
            raise StageInputsChanged(
                f"{self.run_dir} was made with another config (see {saved}); use another name= or remove the directory"
            )
        saved.write_text(text)
        logs = link_logs(self.run_dir)
        if logs is not None:
            self.log(f"[ray] the actors' and libraries' output: {logs}")

    @property
    def tracking(self) -> TrackingRun:
        """The run's trackers, started on first use (a resumed run finds its tracker runs' ids in tracking.json)."""
        if self._tracking is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._tracking = TrackingRun.start(self.config.tracking, self.config.name, self.run_dir, self.config.model_dump(mode="json"))
        return self._tracking

    def _done(self, stage_dir: Path, inputs: dict) -> dict | None:
        """The manifest of a finished stage made from `inputs`; None if it still has to run."""
        path = stage_dir / "manifest.json"
        if not path.exists():
            return None
        manifest = json.loads(path.read_text())
        if not manifest.get("complete"):
            return None
        if manifest.get("inputs") != json.loads(json.dumps(inputs, default=str)):
            raise StageInputsChanged(f"{stage_dir} holds a finished stage made from other inputs; use a new run name")
        self.log(f"[{stage_dir.relative_to(self.run_dir)}] done earlier: reusing it")
        return manifest

    # --- stages ------------------------------------------------------------------------------

    def initial_policy(self) -> Path:
        """The starting policy: a local directory, a Hub snapshot, or the warm-started tiny model."""
        from fpa_ray.warmstart import warm_start

        config = self.config
        name = config.policy.name_or_path
        if name != "tiny":
            if Path(name).is_dir():
                return Path(name).resolve()
            from huggingface_hub import snapshot_download  # into HF_HOME: a shared volume on clusters

            with self.ledger.stage("download", 0, cpus=1):
                return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
        with self.ledger.stage("warmstart", 0, cpus=os.cpu_count() or 1):
            result = warm_start(config.policy.tiny, config.policy.sft, config.data.synthetic, seed=config.seed, log=self.log)
        self.log(f"[warmstart] tiny policy {'reused from cache' if result.cached else 'trained'}: {result.path}")
        return result.path

    def _prompts(self, sources) -> list[PromptRow]:
        rows: list[PromptRow] = []
        for source in sources:
            loaded = load_prompts(source, self.config.data.synthetic, self.config.seed)
            if loaded.skipped:
                self.log(f"[prompts] {source.name}: skipped {len(loaded.skipped)} malformed rows, first: {loaded.skipped[0]}")
            rows.extend(loaded.rows)
        return rows

    def generate(
        self, round_index, policy: Path, sampler: SamplerConfig | None = None, prompts=None, stage_dir=None, stage="generate", seed=None
    ) -> Path:
        stage_dir = stage_dir or self.run_dir / f"round_{round_index}" / "samples"
        return self.generate_many(round_index, [(policy, stage_dir)], sampler, prompts, stage, seed)[0]

    def generate_many(self, round_label, parts: list[tuple[Path, Path]], sampler: SamplerConfig | None = None, prompts=None,
                      stage="generate", seed=None) -> list[Path]:
        """Sample every (policy, stage directory) of `parts` in one stage: one actor pool, new weights in place."""
        from fpa_ray.sampler.stage import GenerateStage, Target, timing_summary

        config = self.config
        sampler = sampler or config.sampler
        prompts = prompts if prompts is not None else self._prompts([config.data.train])
        manifests = {d: json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").exists() else {} for _, d in parts}
        for _, stage_dir in parts:
            if manifests[stage_dir].get("complete"):
                self.log(f"[{stage_dir.relative_to(self.run_dir)}] done earlier: reusing it")
        todo = [(policy, d) for policy, d in parts if not manifests[d].get("complete")]
        if todo:
            for policy, _ in todo:
                self.log(f"[{stage}] {len(prompts)} prompts x {sampler.n} samples from {policy}")
            resources = {"cpus": sampler.num_actors * sampler.cpus_per_actor, "gpus": sampler.num_actors * sampler.gpus_per_actor}
            before = sum(shard["rows"] for _, d in todo for shard in manifests[d].get("shards", {}).values())  # a resumed stage's finished shards
            with self.ledger.stage(stage, round_label, **resources):
                done = GenerateStage(sampler, config.data.template, config.seed + round_label if seed is None else seed).run_many(
                    prompts, [Target(policy, d) for policy, d in todo],
                    on_shard_done=lambda t, s, d, n: self.log(f"  [{stage}] {todo[t][1].relative_to(self.run_dir)}: shard {d}/{n} written"),
                    name=f"{config.name}-{stage}-{round_label}",
                )
            metrics.samples_generated(config.name, stage, sum(m["rows"] for m in done) - before)
            self.log(f"[{stage}] {' + '.join(str(m['rows']) for m in done)} samples; {timing_summary(done)}")
        return [d for _, d in parts]

    def verify(self, round_index: int, samples_dir: Path, stage_dir: Path | None = None, stage="verify") -> Path:
        stage_dir = stage_dir or self.run_dir / f"round_{round_index}" / "verified"
        return self.verify_many(round_index, [(samples_dir, stage_dir)], stage)[0]

    def verify_many(self, round_label, parts: list[tuple[Path, Path]], stage="verify") -> list[Path]:
        """Grade every (samples directory, stage directory) of `parts` in one stage: one verifier pool."""
        import pyarrow as pa

        from fpa_ray.sampler.stage import read_samples
        from fpa_ray.verifier.graders import grader_version
        from fpa_ray.verifier.stage import VerificationReport, VerifyStage

        verifier = self.config.verifier
        inputs = {d: {"samples": _digest(samples / "manifest.json"), "verifier": verifier.model_dump()} for samples, d in parts}
        todo = [(samples, d) for samples, d in parts if not self._done(d, inputs[d])]
        if not todo:
            return [d for _, d in parts]
        reports = {}
        with self.ledger.stage(stage, round_label, cpus=verifier.num_actors * verifier.workers_per_actor):
            datasets = [read_samples(samples) for samples, _ in todo]
            if len(todo) > 1:  # one pool for all: tag each part's rows, split them again after grading
                datasets = [ds.map_batches(lambda t, i=i: t.append_column("part", pa.array([i] * t.num_rows, pa.int32())),
                                           batch_format="pyarrow") for i, ds in enumerate(datasets)]
            verified = VerifyStage(verifier)(datasets[0].union(*datasets[1:]) if len(todo) > 1 else datasets[0],
                                             name=f"{self.config.name}-{stage}-{round_label}").materialize()
            for i, (_, stage_dir) in enumerate(todo):
                part = verified.filter(expr=f"part == {i}").drop_columns(["part"]).materialize() if len(todo) > 1 else verified
                shutil.rmtree(stage_dir, ignore_errors=True)
                part.write_parquet(str(stage_dir / "data"))
                reports[stage_dir] = VerificationReport.from_dataset(part)
        for _, stage_dir in todo:
            report = reports[stage_dir]
            metrics.verdicts(self.config.name, report.by_status)
            self.log(f"[{stage}] {report.summary()}")
            write_json(stage_dir / "manifest.json", {
                "kind": "verified", "inputs": inputs[stage_dir], "complete": True, "checks": report.checks, "by_status": report.by_status,
                "fallbacks": report.fallbacks, "p50_seconds": report.p50_seconds, "p99_seconds": report.p99_seconds,
                "graders": [grader_version(g) for g in (verifier.grader, verifier.cross_grader) if g],
            })
        for _, stage_dir in todo:
            reports[stage_dir].raise_if_unhealthy(verifier.max_failure_share)
        return [d for _, d in parts]

    def build(self, round_index: int, verified_dir: Path) -> Path:
        import pandas as pd

        config = self.config
        paired = get_objective(config.objective.name).batch_type is PairedBatch
        stage_dir = self.run_dir / f"round_{round_index}" / "dataset"
        inputs = {"verified": _digest(verified_dir / "manifest.json"), "build": config.build.model_dump(), "paired": paired, "seed": config.seed}
        if self._done(stage_dir, inputs):
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
        write_json(stage_dir / "manifest.json", {
            "kind": "pairs" if paired else "unpaired", "inputs": inputs, "complete": True, "rows": len(frame), "counts": dict(counts),
            "sha256": content_hash(frame), "policy": samples_manifest["settings"]["policy"], "sampling": samples_manifest["settings"]["sampling"],
            "graders": verified_manifest["graders"], "seed": config.seed + round_index,
        })
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
            "dataset": _digest(dataset_dir / "manifest.json"), "policy": str(policy), "learner": config.learner.model_dump(),
            "objective": config.objective.model_dump(), "fpa": config.fpa.model_dump(), "seed": config.seed,
        }
        if self._done(stage_dir, inputs):
            return stage_dir / "policy"
        learner = config.learner
        self.log(f"[train] {config.objective.name}{' + FPA' if config.fpa.enabled else ''} on {dataset_dir / 'data.parquet'}")
        with self.ledger.stage("train", round_index, cpus=learner.num_workers * learner.cpus_per_worker, gpus=learner.num_workers * learner.gpus_per_worker):
            result = TrainStage(learner, config.objective, config.fpa, config.seed).run(
                read_parquet(dataset_dir / "data.parquet"), policy, policy, stage_dir, name=f"{config.name}-round{round_index}",
                run=config.name, tracking=self.tracking, prefix=f"round_{round_index}/",
            )
        last = result.metrics[-1]
        self.log(f"[train] {len(result.metrics)} steps, last loss {last['loss']:.4f}, C_w {last['C_w']:.4f}, C_l {last['C_l']:.4f}")
        write_json(stage_dir / "manifest.json", {"kind": "train", "inputs": inputs, "complete": True, "steps": len(result.metrics), "policy": str(result.checkpoint)})
        return result.checkpoint

    def evaluate(self, label, policy: Path) -> dict:
        """Score `policy` into `eval_<label>/`; every evaluation of a run samples with the same seeds."""
        return self.evaluate_many([(label, policy)])[0]

    def evaluate_many(self, evaluations: list[tuple[object, Path]]) -> list[dict]:
        """Score each (label, policy) into `eval_<label>/`, those still to do in one generate and one verify stage."""
        config = self.config
        evaluation = config.evaluation
        scores, todo = {}, []
        for label, policy in evaluations:
            stage_dir = self.run_dir / f"eval_{label}"
            inputs = {"policy": str(policy), "evaluation": evaluation.model_dump(), "eval": [s.model_dump() for s in config.data.eval],
                      "verifier": config.verifier.model_dump()}
            done = self._done(stage_dir, inputs)
            if done:
                scores[label] = done["score"]
            else:
                todo.append((label, policy, stage_dir, inputs))
        if todo:
            per_benchmark = {source.benchmark: self._prompts([source]) for source in config.data.eval}
            sampler = config.sampler.model_copy(update={
                "n": evaluation.samples, "temperature": evaluation.temperature, "top_p": evaluation.top_p,
                "max_new_tokens": evaluation.max_new_tokens, "engine": evaluation.engine,
            })
            labels = todo[0][0] if len(todo) == 1 else ",".join(str(label) for label, *_ in todo)  # the ledger's round
            prompts = [row for rows in per_benchmark.values() for row in rows]
            samples = self.generate_many(labels, [(policy, d / "samples") for _, policy, d, _ in todo], sampler, prompts,
                                         stage="eval_generate", seed=config.seed)
            verified = self.verify_many(labels, [(s, d / "verified") for s, (_, _, d, _) in zip(samples, todo)], stage="eval_verify")
            import pandas as pd

            for (label, policy, stage_dir, inputs), verified_dir in zip(todo, verified):
                frame = pd.read_parquet(verified_dir / "data")
                result = score(frame)
                self.log(f"[evaluate] {policy}: pass@1 {result['pass_at_1']:.1%} over {result['problems']} problems x {result['samples_per_problem']}")
                if len(per_benchmark) > 1:  # a dev split to choose on and a test split to report on are kept apart
                    result["benchmarks"] = score_by_benchmark(frame, {label: {row.id for row in rows} for label, rows in per_benchmark.items()})
                    self.log("  " + ", ".join(f"{label} {b['pass_at_1']:.1%}" for label, b in result["benchmarks"].items()))
                write_json(stage_dir / "manifest.json", {"kind": "evaluation", "inputs": inputs, "complete": True, "score": result})
                scores[label] = result
        return [scores[label] for label, _ in evaluations]

    def point(self, label: str, result: dict, time_s: float) -> dict:
        """One point of the accuracy curve: a score and the training resources charged before `time_s`."""
        cost = self.ledger.cost_until(time_s, excluded=NOT_TRAINING)
        point = {"point": label, "pass_at_1": result["pass_at_1"], "pass_at_k": result["pass_at_k"], "maj_at_k": result.get("maj_at_k"),
                 "per_problem": result["per_problem"],
                 "node_hours": cost["node_seconds"] / 3600, "cpu_hours": cost["cpu_seconds"] / 3600, "gpu_hours": cost["gpu_seconds"] / 3600}
        if "benchmarks" in result:
            point["benchmarks"] = {name: {key: b[key] for key in ("pass_at_1", "pass_at_k", "per_problem")} for name, b in result["benchmarks"].items()}
        return point

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
        results = self.evaluate_many([(label, path) for _, label, path, _ in points])
        return [self.point(name, result, moment) for (name, _, _, moment), result in zip(points, results)]

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
        """report.md (accuracy against training resources, data sizes, ledger) and curve.json."""
        config = self.config
        threshold = config.evaluation.solved_threshold
        unit = "GPU-hours" if any(p["gpu_hours"] for p in points) else "CPU-hours"
        lines = [f"# {config.name}", "", self.describe(), "",
                 f"| policy | pass@1 | vs start (SE) | maj@k | pass@k | Total Gain | Total Loss | training node-hours | training {unit} used |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for index, point in enumerate(points):
            change = total_gain_loss(points[0]["per_problem"], point["per_problem"], threshold)
            gain, loss = ("-", "-") if index == 0 else (change["total_gain"], change["total_loss"])
            paired = paired_difference(points[0]["per_problem"], point["per_problem"])
            versus = "-" if index == 0 else f"{paired['difference'] * 100:+.1f} ({paired['se'] * 100:.1f}) pts"
            hours = point["gpu_hours"] if unit == "GPU-hours" else point["cpu_hours"]
            majority = "-" if point["maj_at_k"] is None else f"{point['maj_at_k']:.1%}"
            lines.append(f"| {point['point']} | {point['pass_at_1']:.1%} | {versus} | {majority} | {point['pass_at_k']:.1%} | {gain} | {loss} "
                         f"| {point['node_hours']:.4f} | {hours:.4f} |")
        if "benchmarks" in points[0]:
            lines += ["", "| policy | " + " | ".join(f"{label} pass@1 | vs start (SE)" for label in points[0]["benchmarks"]) + " |",
                      "|---|" + "---|---|" * len(points[0]["benchmarks"])]
            for index, point in enumerate(points):
                cells = []
                for label, bench in point["benchmarks"].items():
                    paired = paired_difference(points[0]["benchmarks"][label]["per_problem"], bench["per_problem"])
                    cells += [f"{bench['pass_at_1']:.1%}", "-" if index == 0 else f"{paired['difference'] * 100:+.1f} ({paired['se'] * 100:.1f}) pts"]
                lines.append(f"| {point['point']} | " + " | ".join(cells) + " |")
        evaluation = config.evaluation
        lines += ["", f"pass@1: mean over the eval problems of the share of {evaluation.samples} samples at T={evaluation.temperature} "
                  f"that are correct; vs start: the mean per-problem change of pass@1 on the same problems, with its standard error over problems "
                  f"(a change under 2 SE is not resolved by this evaluation); maj@k: the most frequent answer of the {evaluation.samples} is right; Total Gain/Loss against the start: problems crossing pass@1 >= {threshold}. Training "
                  f"node-hours: the cluster's hosts (machines) x wall time of every stage but {', '.join(sorted(NOT_TRAINING))}, up to that "
                  f"policy: what the job held, used or idle; training {unit} used: what those stages held of it.", ""]
        for round_index in range(1, config.rounds + 1):
            manifest = self.run_dir / f"round_{round_index}" / "dataset" / "manifest.json"
            if manifest.exists():
                data = json.loads(manifest.read_text())
                lines.append(f"round {round_index} data: {data['rows']} {data['kind']} rows; {data['counts']}")
        lines += ["", "| stage | wall s | node-hours | CPU-hours | GPU-hours |", "|---|---|---|---|---|"]
        for stage, total in self.ledger.totals().items():
            lines.append(f"| {stage} | {total['wall_s']:.1f} | {total['node_seconds'] / 3600:.4f} | {total['cpu_seconds'] / 3600:.4f} "
                         f"| {total['gpu_seconds'] / 3600:.4f} |")
        write_json(self.run_dir / "curve.json", {"name": config.name, "description": self.describe(), "unit": "node-hours", "used": unit,
                                                 "points": [curve_point(p, points[0]) for p in points]})
        # Each point's per-problem pass@1 (overall and per benchmark): what a paired or bootstrap comparison across runs reads.
        write_json(self.run_dir / "per_problem.json", {"points": [
            {"point": p["point"], "per_problem": p["per_problem"], "benchmarks": {k: b["per_problem"] for k, b in p.get("benchmarks", {}).items()}}
            for p in points]})
        with self.tracking.open("eval/", self.run_dir / "tensorboard") as trackers:  # the curve: one step per evaluated policy
            for index, point in enumerate(points):
                trackers.log({"pass_at_1": point["pass_at_1"], "pass_at_k": point["pass_at_k"], "node_hours": point["node_hours"],
                              "cpu_hours": point["cpu_hours"], "gpu_hours": point["gpu_hours"],
                              **{f"{label}/pass_at_1": b["pass_at_1"] for label, b in point.get("benchmarks", {}).items()}}, index)
        with self.tracking.open("cost/") as trackers:
            trackers.log({f"{stage}/{key.replace('_seconds', '_hours')}": value / 3600 if key != "wall_s" else value
                          for stage, total in self.ledger.totals().items() for key, value in total.items()}, 0)
        path = self.run_dir / "report.md"
        path.write_text("\n".join(lines) + "\n")
        self.log("\n".join(lines))
        return path
