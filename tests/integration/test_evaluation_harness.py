"""`evaluate --benchmarks` on a real local Ray cluster: vLLM sampler pool, both graders, reuse and resume.

The benchmarks are local files in MATH500's and GSM8K's real column layouts (the Hub is unreachable
here) holding one-step arithmetic problems that the policy under test was fine-tuned on, so it solves
most but not all of them and every metric has both verdicts to count. MATH500's gold answers are
written as \\binom{v}{1}: math_verify evaluates it to v, the normalising grader does not read binomials
(its arithmetic reader would see through \\sqrt{v^2}), so every correct sample is a cross-grader
disagreement the harness has to surface.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from fpa_ray.config import SFTConfig, SyntheticTaskConfig, TinyModelConfig, load_config
from fpa_ray.data.synthetic import generate
from fpa_ray.evaluation.harness import BenchmarkEvaluation
from fpa_ray.main import main
from fpa_ray.verifier.graders import grader_version
from fpa_ray.warmstart import warm_start

K = 4
# ~140 distinct problems: 150 SFT steps (~25 s) learn them to ~77% pass@1 at T=0.7.
TASK = SyntheticTaskConfig(min_steps=1, max_steps=1, operand_max=9, multiplier_max=3, test_percent=20)
TRAIN = 100


@pytest.fixture(scope="module")
def benchmark_policy(tmp_path_factory):
    """The tiny policy fine-tuned on the problems the benchmark files hold (the session's tiny_policy solves none)."""
    sft = SFTConfig(steps=150, batch_size=32, warmup_steps=20, train_problems=TRAIN, tokenizer_problems=TRAIN, eval_problems=10,
                    eval_samples=1, max_new_tokens=48)
    return warm_start(TinyModelConfig(), sft, TASK, seed=0, cache_dir=tmp_path_factory.mktemp("cache")).path


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    problems = generate(TASK, "train", TRAIN, seed=0)[:24]
    math500 = [
        {"problem": p.prompt, "solution": p.solution, "answer": f"\\binom{{{p.answer}}}{{1}}", "subject": "Arithmetic",
         "level": 1, "unique_id": f"test/arithmetic/{i}.json"}
        for i, p in enumerate(problems[:12])
    ]
    gsm8k = [{"question": p.prompt, "answer": f"{p.solution.split(chr(92))[0].strip()}\n#### {p.answer}"} for p in problems[12:]]
    gsm8k.insert(3, {"question": "A row without its answer."})  # malformed: skipped and counted, not lost
    (root / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math500))
    (root / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k))
    return root


def _overrides(tmp_path, files, k=K):
    return [
        f"output_dir={tmp_path / 'runs'}", f"evaluation.samples={k}", "evaluation.max_new_tokens=48", "sampler.shard_size=4",
        "sampler.dtype=float32", "verifier.num_actors=1",
        f"data.eval=[{{name: math500, path: {files / 'math500.jsonl'}, max_new_tokens: 40}}, "
        f"{{name: gsm8k, label: gsm8k_local, path: {files / 'gsm8k.jsonl'}, template: tiny-chat, skip_invalid: true}}]",
    ]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def evaluated(ray_cluster, benchmark_policy, benchmark_files, tmp_path_factory):
    """`evaluate --benchmarks` as a user runs it: SIGKILLed once math500 is scored, then run again to the end."""
    tmp_path = tmp_path_factory.mktemp("evaluate")
    overrides = _overrides(tmp_path, benchmark_files)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "fpa_ray.main", "evaluate", "--checkpoint", str(benchmark_policy), "--benchmarks", "math500,gsm8k_local",
               *overrides]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = tmp_path / "runs" / "evaluations"
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not list(root.glob("*/math500/*/score.json")):
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-3000:]
    os.kill(first.pid, signal.SIGKILL)  # math500 finished; gsm8k_local not yet
    first.wait()
    finished = {p: p.stat().st_mtime_ns for p in root.glob("*/math500/*/**/*") if p.is_file()}
    unfinished = list(root.glob("*/gsm8k_local/*/score.json")) + list(root.glob("*/summary.json"))
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return SimpleNamespace(tmp_path=tmp_path, overrides=overrides, env=env, command=command, root=root, finished=finished,
                           unfinished=unfinished, second=second)


def test_benchmarks_scored_cross_graded_and_reused(evaluated, benchmark_policy, benchmark_files):
    # The same evaluation once more, in this process: both benchmarks reused, nothing recomputed.
    config = load_config("tiny-cpu", evaluated.overrides)
    written = {p: p.stat().st_mtime_ns for p in evaluated.root.rglob("score.json")}
    logs = []
    summary_path = BenchmarkEvaluation(config, log=logs.append).run(benchmark_policy, ["gsm8k_local", "math500"])
    assert sum("reusing" in line for line in logs) == 2 and len(written) == 2
    assert {p: p.stat().st_mtime_ns for p in evaluated.root.rglob("score.json")} == written
    summary = json.loads(summary_path.read_text())
    assert set(summary["benchmarks"]) == {"math500", "gsm8k_local"}  # summary.json keys are sorted
    scores = {}
    for label, problems in (("math500", 12), ("gsm8k_local", 12)):
        row = summary["benchmarks"][label]
        result_dir = summary_path.parent / label / os.path.basename(row["dir"])
        samples = _lines(result_dir / "samples.jsonl")
        assert len(samples) == problems * K and row["problems"] == problems and row["samples_per_problem"] == K
        by_problem: dict[str, list[dict]] = {}
        for sample in samples:
            by_problem.setdefault(sample["prompt_id"], []).append(sample)
        # Recompute every metric from the per-sample lines.
        means = [sum(s["reward"] for s in group) / K for group in by_problem.values()]
        assert row["pass_at_1"] == pytest.approx(sum(means) / problems)
        assert row["pass_at_k"] == pytest.approx(sum(max(s["reward"] for s in g) for g in by_problem.values()) / problems)
        majority = 0
        for group in by_problem.values():
            answered = [s for s in group if s["extracted"]]
            if answered:
                winner = Counter(s["extracted"] for s in answered).most_common(1)[0][0]
                majority += next(s["reward"] for s in answered if s["extracted"] == winner) == 1.0
        assert row["maj_at_k"] == pytest.approx(majority / problems)
        assert row["failure_share"] == pytest.approx(sum(s["status"] in ("unparseable", "timeout", "error") for s in samples) / len(samples))
        assert row["mean_response_tokens"] == pytest.approx(sum(s["response_tokens"] for s in samples) / len(samples))
        assert max(s["response_tokens"] for s in samples) <= (40 if label == "math500" else 48)  # per-benchmark budget
        assert row["graders"][0].startswith("math_verify==") and row["graders"][1] == grader_version("normalized")
        differing = _lines(result_dir / "disagreements.jsonl")
        assert row["disagreements"] == len(differing) == sum(s["reward"] != s["cross_reward"] for s in samples)
        for line in differing:
            assert {"problem", "answer", "extracted", "cross_extracted", "status", "cross_status"} <= set(line)
        scores[label] = (row, samples, differing)

    math500, samples, differing = scores["math500"]
    correct = [s for s in samples if s["reward"] == 1.0]
    assert correct, "the tiny policy solved none of 12 problems x 4 samples: too weak to test cross-grading"
    assert all(s["cross_reward"] == 0.0 for s in correct)  # \binom{v}{1}: only math_verify sees v
    assert len(differing) == len(correct) and math500["cross_pass_at_1"] == 0.0
    gsm8k = scores["gsm8k_local"][0]
    assert gsm8k["disagreements"] == 0 and gsm8k["cross_pass_at_1"] == pytest.approx(gsm8k["pass_at_1"])
    score_file = json.loads((summary_path.parent / "gsm8k_local" / os.path.basename(gsm8k["dir"]) / "score.json").read_text())
    assert len(score_file["skipped_rows"]) == 1 and "line 4" in score_file["skipped_rows"][0] and "answer" in score_file["skipped_rows"][0]

    overall = summary["overall"]
    assert overall["pass_at_1"] == pytest.approx((math500["pass_at_1"] + gsm8k["pass_at_1"]) / 2) and overall["problems"] == 24
    assert "| math500 | 12 |" in summary_path.with_suffix(".md").read_text()
    entries = [json.loads(line) for line in (summary_path.parent / "ledger.jsonl").read_text().splitlines()]
    # Each benchmark generated and verified once over the two processes: the killed one's work was kept.
    assert Counter(e["stage"] for e in entries) == {"eval_generate": 2, "eval_verify": 2}

    other = BenchmarkEvaluation(load_config("tiny-cpu", _overrides(evaluated.tmp_path, benchmark_files, k=2)), log=logs.append)
    assert other.result_dir(summary_path.parent, config.data.eval[0]) != BenchmarkEvaluation(config).result_dir(summary_path.parent, config.data.eval[0])


def test_an_interrupted_evaluation_resumes_and_compares_with_a_baseline(evaluated, capsys):
    second, root, command, tmp_path = evaluated.second, evaluated.root, evaluated.command, evaluated.tmp_path
    assert not evaluated.unfinished  # the kill landed between the two benchmarks
    assert "[evaluate] math500: reusing" in second.stdout and f"[evaluate] gsm8k_local: 12 problems x {K} samples" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in evaluated.finished} == evaluated.finished
    summary_path = next(root.glob("*/summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["benchmarks"]["gsm8k_local"]["problems"] == 12

    # Against itself as the baseline: every problem compared, nothing gained or lost. The same command line
    # in this process (the subprocess runs above are the CLI's; this one reuses both benchmarks).
    arguments = command[3:]  # after `python -m fpa_ray.main`
    assert main([*arguments, "--baseline", str(summary_path), "--out", str(tmp_path / "vs")]) == 0
    compared = json.loads((tmp_path / "vs" / "summary.json").read_text())["versus_baseline"]
    assert {label: (c["compared"], c["total_gain"], c["total_loss"]) for label, c in compared.items()} == {
        "math500": (12, 0, 0), "gsm8k_local": (12, 0, 0)}
    assert "Total Gain" in (tmp_path / "vs" / "summary.md").read_text()

    overrides = evaluated.overrides
    capsys.readouterr()
    assert main([*arguments[:-len(overrides) - 2], "--benchmarks", "math500,nope", *overrides]) == 2
    assert "benchmark 'nope'" in capsys.readouterr().err
