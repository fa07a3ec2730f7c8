"""Benchmark evaluation of one checkpoint: `python -m fpa_ray.main evaluate --checkpoint C --benchmarks a,b`.

Per benchmark: k sampled responses per problem from the sampler pool (restartable shards), each
graded by the verifier pool with both graders (the evaluator every run's evaluation uses:
fpa_ray.evaluation.evaluator), then scored (fpa_ray.evaluation.scoring). Outputs
are keyed by everything that determines them, so a repeated evaluation is reused, not recomputed:

    <output_dir>/evaluations/<checkpoint name>-<fingerprint>/
        <benchmark>/<template>-k<k>-T<temperature>-<settings hash>/
            samples/ (shards + manifest)   verified/ (data/: Parquet; manifest)   samples.jsonl (one line per sample)
            disagreements.jsonl (the graders differ)   score.json (written last: the benchmark is done)
        summary.json, summary.md (this invocation's benchmarks), ledger.jsonl

The fingerprint covers the name, size and modification time of every checkpoint file; the settings
hash covers the benchmark source (and a local file's content), template, sampling parameters, seed,
engine and grader versions. An interrupted evaluation keeps its finished generation shards, grading
and benchmarks and redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fpa_ray.config import PromptSourceConfig, RunConfig, SamplerConfig, VerifierConfig
from fpa_ray.data.schemas import SCHEMAS
from fpa_ray.data.sources import load_prompts
from fpa_ray.evaluation.evaluator import Evaluator, evaluation_sampler
from fpa_ray.evaluation.report import summary_markdown
from fpa_ray.evaluation.scoring import disagreements, overall, paired_difference, score, total_gain_loss
from fpa_ray.run_directory import RunDirectory
from fpa_ray.run_files import write_json

SAMPLE_COLUMNS = ("prompt_id", "sample_index", "answer", "response", "extracted", "status", "reward", "cross_extracted",
                  "cross_status", "cross_reward", "finish_reason")
OTHER_GRADER = {"math_verify": "normalized", "normalized": "math_verify"}


class BenchmarkError(ValueError):
    """A benchmark name or baseline that cannot be evaluated; the message says which and why."""


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """Name, size and mtime of every file of the checkpoint: new weights at the same path get a new key."""
    digest = hashlib.sha256()
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(checkpoint)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class BenchmarkEvaluation:
    """Evaluates checkpoints on the benchmarks of `config.data.eval` (or any known schema by name)."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        self.root = (config.output_dir / "evaluations").resolve()

    def sources(self, names: Sequence[str] | None) -> list[PromptSourceConfig]:
        """The benchmarks to evaluate: each name is a data.eval label, else a schema with its default source."""
        configured = {source.benchmark: source for source in self.config.data.eval}
        if not names:
            return list(configured.values())
        chosen = []
        for name in names:
            if name in configured:
                chosen.append(configured[name])
            elif name in SCHEMAS:
                chosen.append(PromptSourceConfig(name=name))
            else:
                raise BenchmarkError(
                    f"benchmark {name!r}: not a data.eval label ({', '.join(configured) or 'none'}) nor a known schema "
                    f"({', '.join(SCHEMAS)})"
                )
        return chosen

    def settings(self, source: PromptSourceConfig) -> tuple[SamplerConfig, VerifierConfig, str]:
        """The evaluation's sampling settings with the benchmark's length, and both graders (a second one where the run has none)."""
        config = self.config
        sampler = evaluation_sampler(config, source.max_new_tokens)
        verifier = config.verifier
        if verifier.cross_grader is None or verifier.cross_grader == verifier.grader:
            verifier = verifier.model_copy(update={"cross_grader": OTHER_GRADER[verifier.grader]})
        return sampler, verifier, source.template or config.data.template

    def key(self, source: PromptSourceConfig) -> dict:
        """What a benchmark's results depend on besides the checkpoint."""
        from fpa_ray.sampler.stage import sampling_settings
        from fpa_ray.verifier.graders import grader_version

        sampler, verifier, template = self.settings(source)
        where = source.model_dump(include={"name", "path", "split", "limit", "skip_invalid"})
        local = Path(source.path) if source.path else None
        if local is not None and local.is_file():
            where["sha256"] = hashlib.sha256(local.read_bytes()).hexdigest()
        if source.name == "synthetic":
            where["synthetic"] = self.config.data.synthetic.model_dump()
        return {
            "source": where, "template": template, "sampling": {**sampling_settings(sampler), "engine": sampler.engine},
            "seed": self.config.seed, "graders": [grader_version(verifier.grader), grader_version(verifier.cross_grader)],
            "grader_timeout_s": verifier.timeout_s,
        }

    def result_dir(self, checkpoint_dir: Path, source: PromptSourceConfig) -> Path:
        key = self.key(source)
        sampling = key["sampling"]
        return checkpoint_dir / source.benchmark / f"{key['template']}-k{sampling['n']}-T{sampling['temperature']:g}-{_hash(key)}"

    def run(self, checkpoint: Path, names: Sequence[str] | None = None, baseline: Path | None = None, out: Path | None = None) -> Path:
        """Evaluate `checkpoint` on each benchmark (reusing finished ones); returns summary.json."""
        from fpa_ray.cluster import init_ray
        from fpa_ray.sampler.engines import check_checkpoint

        checkpoint = checkpoint.resolve()
        check_checkpoint(checkpoint)
        sources = self.sources(names)
        base = _load_baseline(baseline) if baseline else None
        checkpoint_dir = self.root / f"{checkpoint.name}-{checkpoint_fingerprint(checkpoint)}"
        init_ray()
        evaluator = Evaluator(RunDirectory(checkpoint_dir, self.config, self.log))  # its ledger.jsonl: every benchmark's stages
        results = {source.benchmark: self.benchmark(checkpoint, evaluator, source) for source in sources}
        scores = {label: result["score"] for label, result in results.items()}
        evaluation = self.config.evaluation
        summary = {
            "checkpoint": str(checkpoint), "evaluations": str(checkpoint_dir),
            "settings": {"k": evaluation.samples, "temperature": evaluation.temperature, "top_p": evaluation.top_p,
                         "seed": self.config.seed, "solved_threshold": evaluation.solved_threshold},
            "benchmarks": {label: {"dir": result["dir"], "template": result["key"]["template"],
                                   "max_new_tokens": result["key"]["sampling"]["max_new_tokens"], "graders": result["key"]["graders"],
                                   **{k: v for k, v in result["score"].items() if k != "per_problem"}, "throughput": result["throughput"]}
                           for label, result in results.items()},
            "overall": overall(scores),
            "per_problem": {label: s["per_problem"] for label, s in scores.items()},
        }
        if base is not None:
            summary["baseline"] = {"path": str(baseline), "checkpoint": base.get("checkpoint")}
            summary["versus_baseline"] = versus_baseline(scores, base, evaluation.solved_threshold)
        out = (out or checkpoint_dir).resolve()
        write_json(out / "summary.json", summary)
        (out / "summary.md").write_text(summary_markdown(summary))
        self.log(summary_markdown(summary))
        return out / "summary.json"

    def benchmark(self, checkpoint: Path, evaluator: Evaluator, source: PromptSourceConfig) -> dict:
        """One benchmark's score.json contents, computed or reused."""
        label, key = source.benchmark, self.key(source)
        result_dir = self.result_dir(evaluator.run.path, source)
        done = result_dir / "score.json"
        if done.is_file():
            result = json.loads(done.read_text())
            if result.get("key") == json.loads(json.dumps(key, default=str)):
                self.log(f"[evaluate] {label}: reusing {result_dir}")
                return result
        sampler, verifier, template = self.settings(source)
        prompts = load_prompts(source, self.config.data.synthetic, self.config.seed)
        if prompts.skipped:
            self.log(f"[evaluate] {label}: skipped {len(prompts.skipped)} malformed rows, first: {prompts.skipped[0]}")
        if not prompts.rows:
            raise BenchmarkError(f"benchmark {label!r}: no problems to evaluate ({source.path or source.name})")
        self.log(f"[evaluate] {label}: {len(prompts.rows)} problems x {sampler.n} samples, template {template}")
        started = time.time()
        evaluator.sample(label, [(checkpoint, result_dir)], prompts.rows, sampler, template)
        generated = time.time()
        frame = evaluator.grade(label, [result_dir], verifier, strict=False)[0]  # reported, not fatal: the numbers are still the model's
        finished = time.time()
        _write_jsonl(result_dir / "samples.jsonl", frame, label)
        differing = disagreements(frame)
        _write_jsonl(result_dir / "disagreements.jsonl", differing, label, with_problem=True)
        result = {
            "benchmark": label, "checkpoint": str(checkpoint), "dir": str(result_dir), "key": key, "score": score(frame),
            "skipped_rows": prompts.skipped,
            "throughput": {"generate_s": generated - started, "verify_s": finished - generated,
                           "problems_per_s": len(prompts.rows) / max(finished - started, 1e-9),
                           "samples_per_s": len(frame) / max(finished - started, 1e-9)},
        }
        write_json(done, result)
        s = result["score"]
        self.log(f"[evaluate] {label}: pass@1 {s['pass_at_1']:.1%}, pass@{sampler.n} {s['pass_at_k']:.1%}, "
                 f"{s['disagreements']} grader disagreements, {result['throughput']['problems_per_s']:.2f} problems/s")
        return json.loads(json.dumps(result, default=str))


def _write_jsonl(path: Path, frame: pd.DataFrame, label: str, with_problem: bool = False) -> None:
    columns = [c for c in (("problem",) if with_problem else ()) + SAMPLE_COLUMNS if c in frame.columns]
    rows = frame[columns].assign(benchmark=label, response_tokens=frame["response_token_ids"].map(len))
    partial = path.with_suffix(".partial")
    if rows.empty:  # pandas writes "[]" for an empty frame: not JSON lines
        partial.write_text("")
    else:
        rows.to_json(partial, orient="records", lines=True, force_ascii=False)
    partial.replace(path)


def _load_baseline(path: Path) -> dict:
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise BenchmarkError(f"baseline {path}: no such summary.json (pass the summary of an earlier `evaluate --benchmarks`)")
    summary = json.loads(path.read_text())
    if "per_problem" not in summary:
        raise BenchmarkError(f"baseline {path}: no per_problem results; is it an evaluation summary?")
    return summary


def versus_baseline(scores: dict[str, dict], baseline: dict, solved_threshold: float) -> dict:
    """Total Gain / Total Loss per benchmark that both evaluations scored, with the problem lists."""
    result = {}
    for label, current in scores.items():
        before = baseline["per_problem"].get(label)
        if before is None:
            continue
        change = total_gain_loss(before, current["per_problem"], solved_threshold)
        change["baseline_pass_at_1"] = sum(before[p] for p in before) / len(before) if before else 0.0
        paired = paired_difference(before, current["per_problem"])
        change.update(difference=paired["difference"], se=paired["se"])
        result[label] = change
    return result
