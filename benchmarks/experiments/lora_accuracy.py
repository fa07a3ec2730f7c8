"""What LoRA costs in accuracy on the embedded task: one offline round and N GRPO steps, each with full
fine-tuning and with LoRA, from the same warm start, on the same data, scored on the same test problems.

    python benchmarks/experiments/lora_accuracy.py [--seeds 7 8 9] [--grpo-steps 20] [--out runs/lora_accuracy] [--resume]

Offline: configs/tiny-cpu.yaml's recipe (FPA-RPO) for one round; both runs train on the same round-1
pairs (generated and verified once per seed, seeded_runs.py). GRPO: the testbed's settings
(grpo_testbed.py, chosen there on dev: 128 fresh prompts x 8 samples at T=0.7, 2 updates per rollout)
for `--grpo-steps` steps. LoRA: rank `--rank`, alpha 2 x rank, every linear layer, the learning rate
`--lora-lr-factor` times full fine-tuning's (LoRA's usual ratio; not tuned here, which the summary
says). Every policy is scored on `--test` test problems x 4 samples at T=0.7 with the seed's sampling
seeds; LoRA - full is the paired per-problem difference of the two trained policies. No choice is
made on these figures. Each finished run is reused with --resume; writes
benchmarks/results/lora_accuracy/summary.md with the command, commit, date and machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fpa_ray.cluster import init_ray
from fpa_ray.evaluation import paired_difference
from fpa_ray.run_files import provenance
from seeded_runs import grpo_run, offline_run, regenerate

RESULTS = Path(__file__).resolve().parents[1] / "results" / "lora_accuracy"
GRPO_TESTBED = ["grpo.prompts_per_step=128", "learner.global_batch_size=512", "data.train.limit=20000", "sampler.temperature=0.7",
                "learner.lr=5e-5"]
OFFLINE_LR, GRPO_LR = 1e-5, 5e-5  # configs/tiny-cpu.yaml's, the testbed's


def lora(args, lr: float) -> list[str]:
    return [f"learner.lora={{rank: {args.rank}, alpha: {2 * args.rank}, target_modules: all-linear}}", f"learner.lr={lr * args.lora_lr_factor:g}"]


def final(run_dir: Path) -> tuple[dict, dict, float]:
    """(the start's per-problem pass@1, the last policy's, the node-hours it trained)."""
    points = json.loads((run_dir / "per_problem.json").read_text())["points"]
    cost = json.loads((run_dir / "curve.json").read_text())["points"][-1]["node_hours"]
    return points[0]["per_problem"], points[-1]["per_problem"], cost


def versus(before: dict, after: dict) -> str:
    change = paired_difference(before, after)
    return f"{100 * change['difference']:+.1f} ({100 * change['se']:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lora-lr-factor", type=float, default=10.0)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("runs/lora_accuracy"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs in --out")
    args = parser.parse_args()
    args.out = args.out.resolve()
    init_ray()
    rows, differences = [], {"offline": [], "grpo": []}
    for seed in args.seeds:
        common = [f"seed={seed}", f"output_dir={args.out}", "evaluation.samples=4",
                  f"data.eval=[{{name: synthetic, split: test, limit: {args.test}, label: test}}]"]
        data_dir, _ = regenerate(seed, common)
        grpo = [*GRPO_TESTBED, f"grpo.steps={args.grpo_steps}", f"grpo.eval_every={args.grpo_steps}"]
        runs = {
            "offline full": offline_run(f"s{seed}-offline-full", ["rounds=1"], common, args.out, data_dir, args.resume),
            "offline LoRA": offline_run(f"s{seed}-offline-lora", ["rounds=1", *lora(args, OFFLINE_LR)], common, args.out, data_dir, args.resume),
            "GRPO full": grpo_run(f"s{seed}-grpo-full", grpo, common, args.out, args.resume),
            "GRPO LoRA": grpo_run(f"s{seed}-grpo-lora", [*grpo, *lora(args, GRPO_LR)], common, args.out, args.resume),
        }
        scores = {name: final(run_dir) for name, run_dir in runs.items()}
        start = scores["offline full"][0]
        cells = [f"{100 * sum(start.values()) / len(start):.1f}"]
        for method in ("offline", "GRPO"):
            full, adapted = scores[f"{method} full"], scores[f"{method} LoRA"]
            diff = paired_difference(full[1], adapted[1])
            differences[method.lower()].append(diff)
            cells += [versus(start, full[1]), versus(start, adapted[1]), versus(full[1], adapted[1]), f"{full[2]:.3f} / {adapted[2]:.3f}"]
        rows.append(f"| {seed} | " + " | ".join(cells) + " |")
    pooled = []
    for method, diffs in differences.items():
        mean = sum(d["difference"] for d in diffs) / len(diffs)
        se = math.sqrt(sum(d["se"] ** 2 for d in diffs)) / len(diffs)
        pooled.append(f"- {method}: LoRA - full over the {len(diffs)} seeds {100 * mean:+.1f} points (SE {100 * se:.1f}); seeds from "
                      f"{100 * min(d['difference'] for d in diffs):+.1f} to {100 * max(d['difference'] for d in diffs):+.1f}.")
    now = provenance()
    lines = ["# What LoRA costs in accuracy on the embedded task (test split)", "",
             f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}.", "",
             f"LoRA rank {args.rank}, alpha {2 * args.rank}, every linear layer, lr {args.lora_lr_factor:g}x full fine-tuning's (not tuned). "
             f"Offline: configs/tiny-cpu.yaml's FPA-RPO, one round, both on the same pairs. GRPO: the testbed's settings, {args.grpo_steps} steps.",
             "", "| seed | start test pass@1 | offline full - start (SE) | offline LoRA - start | offline LoRA - full | offline node-hours full / LoRA "
             "| GRPO full - start | GRPO LoRA - start | GRPO LoRA - full | GRPO node-hours full / LoRA |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, "", *pooled, "",
             f"pass@1 in %, {args.test} test problems x 4 samples at T=0.7; every difference is paired per problem, its standard "
             "error over problems in brackets; the seeds' errors add in quadrature in the mean."]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
