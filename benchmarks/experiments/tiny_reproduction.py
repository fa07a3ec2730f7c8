"""The paper's comparison at tiny scale: offline DPO, FPA-DPO, SimPER, FPA-SimPER and online GRPO
from the same warm-started policy, over several seeds, judged by accuracy against CPU-hours.

    python benchmarks/experiments/tiny_reproduction.py [--seeds 0 1 2] [--epochs 2] [--grpo-steps 40] [--out runs/tiny_reproduction]

Per seed: one offline run regenerates the data (500 train prompts x 8 samples at T=1 from the
warm start, seed-dependent) and trains DPO; the other three offline variants reuse that run's
samples and verdicts (copied, with their ledger entries, so each variant is charged for the data
it trains on) and differ only in build/train. Offline policies are evaluated after each epoch
(learner.snapshot_every = one epoch), GRPO every `--eval-every` steps. Every evaluation: 300
held-out problems x 4 samples at T=0.7, the same seeds for every policy. Training CPU-hours:
resources held x wall of every stage except warm start and evaluation (fpa_ray.accounting).
Writes per-seed compare tables (fpa_ray.compare) and summary.md / summary.png across seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fpa_ray.cluster import init_ray
from fpa_ray.compare import compare, cost_to_reach
from fpa_ray.config import load_config
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline
from fpa_ray.warmstart import warm_start
from seeded_runs import curve, fresh_or_resumed, log, offline_run, plot_accuracy_curves, regenerate

OFFLINE = {  # variant -> overrides of configs/tiny-cpu.yaml
    "dpo": ["objective.name=dpo", "objective.params={beta: 0.1}", "fpa.enabled=false"],
    "fpa-dpo": ["objective.name=dpo", "objective.params={beta: 0.1}", "fpa.enabled=true", "fpa.lam=1"],
    "simper": ["objective.name=simper", "objective.params={}", "fpa.enabled=false"],
    "fpa-simper": ["objective.name=simper", "objective.params={}", "fpa.enabled=true", "fpa.lam=1"],
}


def offline_variant(variant: str, seed: int, common: list[str], epochs: int, steps_per_epoch: int, out: Path, source: Path, resume: bool) -> Path:
    # whole responses as rejected, as when its results were recorded (the default now cuts them)
    overrides = [*OFFLINE[variant], "build.rejected_cut=none", f"learner.epochs={epochs}", f"learner.snapshot_every={steps_per_epoch}"]
    return offline_run(f"s{seed}-{variant}", overrides, common, out, source, resume)


def grpo_run(seed: int, common: list[str], steps: int, eval_every: int, out: Path, resume: bool) -> Path:
    config = load_config("tiny-cpu-grpo", [*common, f"name=s{seed}-grpo", f"grpo.steps={steps}", f"grpo.eval_every={eval_every}"])
    if fresh_or_resumed(out / config.name, resume):
        log(f"== {config.name}: finished earlier, reused")
        return out / config.name
    start = time.time()
    OnlineGRPOPipeline(config, log=log).run()
    log(f"== {config.name}: {time.time() - start:.0f} s")
    return out / config.name


def summary(runs: dict[str, dict[int, Path]], out: Path) -> str:
    """Mean and spread over seeds; GRPO's final pass@1 of the same seed is each seed's target."""
    seeds = sorted(runs["grpo"])
    lines = ["| method | start | after 1 epoch / mid | final pass@1 | final - start (points) | best trained pass@1 | training CPU-hours "
             "| CPU-hours to reach GRPO's final | share of GRPO's |",
             "|---|---|---|---|---|---|---|---|---|"]

    def spread(values: list[float], percent: bool = True) -> str:
        scale = 100 if percent else 1
        if len(values) == 1:
            return f"{scale * values[0]:.{1 if percent else 4}f}"
        return f"{scale * statistics.mean(values):.{1 if percent else 4}f} ± {scale * statistics.stdev(values):.{1 if percent else 4}f}"

    for method, by_seed in runs.items():
        points = {s: curve(by_seed[s])["points"] for s in seeds}
        grpo_points = {s: curve(runs["grpo"][s])["points"] for s in seeds}
        reach, share = [], []
        for s in seeds:
            target = grpo_points[s][-1]["pass_at_1"]
            grpo_hours = cost_to_reach(grpo_points[s], target, "cpu_hours")
            hours = cost_to_reach(points[s], target, "cpu_hours")
            reach.append("-" if hours is None else f"{hours:.4f}")
            share.append("-" if hours is None else f"{hours / grpo_hours:.2f}")
        lines.append(
            f"| {method} | {spread([points[s][0]['pass_at_1'] for s in seeds])} | {spread([points[s][len(points[s]) // 2]['pass_at_1'] for s in seeds])} "
            f"| {spread([points[s][-1]['pass_at_1'] for s in seeds])} | {spread([points[s][-1]['pass_at_1'] - points[s][0]['pass_at_1'] for s in seeds])} "
            f"| {spread([max(p['pass_at_1'] for p in points[s][1:]) for s in seeds])} "
            f"| {spread([points[s][-1]['cpu_hours'] for s in seeds], percent=False)} | {', '.join(reach)} | {', '.join(share)} |"
        )
    lines += ["", f"Seeds {seeds}; pass@1 in %, mean ± standard deviation over seeds; per-seed values where listed (comma-separated, "
              "by seed). '-': never reached. 'after 1 epoch / mid': the middle evaluated policy of each run (offline: epoch 1 of 2; "
              "GRPO: step 20 of 40). Within a seed every policy is scored on the same problems with the same sampling seeds, so "
              "'final - start' is a paired difference; across seeds the start itself moves by a few points (evaluation noise)."]
    curves = {method: {s: curve(by_seed[s])["points"] for s in seeds} for method, by_seed in runs.items()}
    plot_accuracy_curves(curves, seeds, "pass@1 (%), 300 held-out problems x 4 samples", f"tiny task, seeds {seeds}: one line per seed",
                         out / "summary.png")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-problems", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/tiny_reproduction"))
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs in --out and go on with the others")
    args = parser.parse_args()
    out = args.out.resolve()
    base = load_config("tiny-cpu")
    policy = warm_start(base.policy.tiny, base.policy.sft, base.data.synthetic, seed=0, log=log).path  # one start for every run
    init_ray()
    runs: dict[str, dict[int, Path]] = {"grpo": {}, **{v: {} for v in OFFLINE}}  # GRPO first: the baseline
    for seed in args.seeds:
        common = [f"seed={seed}", f"output_dir={out}", f"policy.name_or_path={policy}",
                  f"data.eval=[{{name: synthetic, split: test, limit: {args.eval_problems}}}]"]
        data_dir, pairs = regenerate(seed, common)
        steps_per_epoch = pairs // base.learner.global_batch_size
        log(f"seed {seed}: {pairs} pairs, {steps_per_epoch} steps per epoch")
        for variant in OFFLINE:
            runs[variant][seed] = offline_variant(variant, seed, common, args.epochs, steps_per_epoch, out, data_dir, args.resume)
        runs["grpo"][seed] = grpo_run(seed, common, args.grpo_steps, args.eval_every, out, args.resume)
        compare([runs[m][seed] for m in runs], out / f"compare-s{seed}")
    text = summary(runs, out)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
