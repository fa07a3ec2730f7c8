"""The headline: offline FPA against online GRPO at both plateaus, pass@1 on a held-out test split
against cumulative training CPU-hours, over seeds.

    python benchmarks/headline.py [--seeds 0 1 2] [--out runs/headline] [--results benchmarks/results/headline]

Every run starts from the same warm-started tiny policy (configs/tiny-cpu.yaml's) and is evaluated
on two splits of the synthetic task, disjoint from the training prompts and from each other: dev
(`--dev` problems) for every choice, test (`--test` problems) for every reported figure, both at
`--samples` samples per problem, T=0.7, with the same sampling seeds for every policy of a seed.

Choices, made on seed 0's dev split with the same budget of tries for each method (two):
  GRPO      lr 2e-5 (configs/tiny-cpu-grpo.yaml) or 5e-5, each for `--grpo-steps` steps with a
            policy kept and evaluated every `--eval-every`; its plateau is the policy with the best
            dev pass@1 (reached: at least PATIENCE evaluations after it did not beat it)
  offline   configs/tiny-cpu.yaml (FPA-RPO, lambda 2, divergence-cut pairs) with and without FPA, for
            rounds of regenerate -> verify -> build -> train until dev pass@1 has not beaten its best
            for one round (at most `--rounds`); its plateau is the round with the best dev pass@1
Seeds 1 and 2 run the chosen GRPO and both offline variants. Each finished run is one cell (its run
directory's curve.json, copied to `<results>/cells/`): a rerun skips it, so a run cut short goes
on where it stopped. Per seed the target is the lower of the two plateaus (on test); the table
gives the training CPU-hours each method needs to reach it (first evaluated policy at or above it),
their ratio, and the spread over seeds. Training CPU-hours: resources held x wall time of every
stage but the warm start and evaluation (fpa_ray.accounting), identically for both pipelines.
Writes `<results>/summary.md` and `summary.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from fpa_ray.cluster import init_ray
from fpa_ray.compare import evaluations_since_best, hours_to_reach
from fpa_ray.config import load_config
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline
from fpa_ray.warmstart import warm_start
from seeded_runs import log, offline_run, plot_accuracy_curves, regenerate

PATIENCE = 2  # GRPO evaluations after the best one that did not beat it: a plateau
GRPO_TRIES = {"grpo-lr2e-5": ["learner.lr=2e-5"], "grpo-lr5e-5": ["learner.lr=5e-5"]}
OFFLINE = {"fpa-rpo": [], "rpo": ["fpa.enabled=false"]}  # configs/tiny-cpu.yaml is FPA-RPO
RESULTS = Path(__file__).parent / "results" / "headline"


def common_overrides(seed: int, out: Path, policy: Path, args) -> list[str]:
    return [f"seed={seed}", f"output_dir={out}", f"policy.name_or_path={policy}", f"evaluation.samples={args.samples}",
            f"data.train.limit={args.train}",
            f"data.eval=[{{name: synthetic, split: dev, limit: {args.dev}, label: dev}}, "
            f"{{name: synthetic, split: test, limit: {args.test}, label: test}}]"]


class Cells:
    """Finished runs by name: a run directory's curve.json, kept in the results folder as it finishes."""

    def __init__(self, out: Path, results: Path):
        self.out, self.dir = out, results / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> dict | None:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, name: str, run_dir: Path) -> dict:
        shutil.copy(run_dir / "curve.json", self.dir / f"{name}.json")
        return self.get(name)


def grpo_cell(name: str, overrides: list[str], common: list[str], args, data_dir: Path) -> Path:
    config = load_config("tiny-cpu-grpo", [*common, f"name={name}", f"grpo.steps={args.grpo_steps}", f"grpo.eval_every={args.eval_every}",
                                           *overrides])
    run_dir = args.out / config.name
    if not (run_dir / "eval_0").exists():  # the start's evaluation: the same inputs as the seed's offline runs
        shutil.copytree(data_dir / "eval_0", run_dir / "eval_0")
    start = time.time()
    OnlineGRPOPipeline(config, log=log).run()
    log(f"== {config.name}: {time.time() - start:.0f} s")
    return run_dir


def dev(point: dict) -> float:
    return point["benchmarks"]["dev"]["pass_at_1"]


def test(point: dict) -> float:
    return point["benchmarks"]["test"]["pass_at_1"]


def plateau(points: list[dict]) -> dict:
    """The policy with the best dev pass@1 (the start's included), and whether dev has stopped rising after it."""
    values = [dev(p) for p in points]
    best = values.index(max(values))
    return {"point": points[best], "index": best, "after": evaluations_since_best(values)}


def run_seed(seed: int, policy: Path, args, cells: Cells, grpo_choice: str | None) -> dict[str, dict]:
    common = common_overrides(seed, args.out, policy, args)
    wanted = [f"s{seed}-{v}" for v in OFFLINE] + [f"s{seed}-{g}" for g in (GRPO_TRIES if grpo_choice is None else [grpo_choice])]
    curves = {name: cells.get(name) for name in wanted}
    if all(curves.values()):
        return curves
    data_dir, _ = regenerate(seed, common)
    for variant, overrides in OFFLINE.items():
        name = f"s{seed}-{variant}"
        if curves[name] is None:
            run_dir = offline_run(name, [*overrides, f"rounds={args.rounds}", "rounds_patience=1"], common, args.out, data_dir)
            curves[name] = cells.put(name, run_dir)
    for try_name in GRPO_TRIES if grpo_choice is None else [grpo_choice]:
        name = f"s{seed}-{try_name}"
        if curves[name] is None:
            curves[name] = cells.put(name, grpo_cell(name, GRPO_TRIES[try_name], common, args, data_dir))
    return curves


def versus(point: dict) -> str:
    """The test split's paired difference from the start and its standard error, in points."""
    bench = point["benchmarks"]["test"]
    return f"{100 * bench['vs_start']:+.1f} ({100 * bench['vs_start_se']:.1f})"


def spread(values: list[float], scale: float = 100, digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def summary(by_seed: dict[int, dict[str, dict]], grpo_choice: str, tries: dict[str, dict], results: Path) -> str:
    seeds = sorted(by_seed)
    methods = {"GRPO (" + grpo_choice.removeprefix("grpo-") + ")": grpo_choice, "offline FPA-RPO": "fpa-rpo", "offline RPO (no FPA)": "rpo"}
    points = {label: {s: by_seed[s][f"s{s}-{key}"]["points"] for s in seeds} for label, key in methods.items()}
    plateaus = {label: {s: plateau(points[label][s]) for s in seeds} for label in methods}
    lines = [f"# Offline FPA vs online GRPO at their plateaus (seeds {seeds})", "",
             "Choices on seed 0's dev split, two tries each: "
             + "; ".join(f"{name}: best dev pass@1 {100 * max(dev(p) for p in curve['points']):.1f}" for name, curve in tries.items())
             + f". Chosen: {grpo_choice} and, offline, "
             + ("FPA-RPO" if max(dev(p) for p in tries["fpa-rpo"]["points"]) >= max(dev(p) for p in tries["rpo"]["points"]) else "RPO without FPA")
             + ".", "",
             "| method | start (test) | plateau (test) | plateau - start (SE) | at | plateau reached | training CPU-hours to the plateau | total CPU-hours run |",
             "|---|---|---|---|---|---|---|---|"]
    for label in methods:
        rows = [plateaus[label][s] for s in seeds]
        reached = ["yes" if r["after"] >= (1 if label.startswith("offline") else PATIENCE) else "no" for r in rows]
        lines.append(
            f"| {label} | {spread([test(points[label][s][0]) for s in seeds])} | {spread([test(r['point']) for r in rows])} "
            f"| {', '.join(versus(r['point']) for r in rows)} "
            f"| {', '.join(r['point']['point'] for r in rows)} | {', '.join(reached)} "
            f"| {spread([r['point']['cpu_hours'] for r in rows], 1, 4)} | {spread([points[label][s][-1]['cpu_hours'] for s in seeds], 1, 4)} |")
    grpo_label, fpa_label = next(iter(methods)), "offline FPA-RPO"
    lines += ["", "| seed | lower plateau (test) | GRPO CPU-hours to it | offline FPA CPU-hours to it | ratio offline / GRPO |", "|---|---|---|---|---|"]
    ratios = []
    for s in seeds:
        target = min(test(plateaus[grpo_label][s]["point"]), test(plateaus[fpa_label][s]["point"]))
        as_test = {label: [{**p, "pass_at_1": test(p)} for p in points[label][s]] for label in (grpo_label, fpa_label)}
        grpo_hours = hours_to_reach(as_test[grpo_label], target, "cpu_hours")
        fpa_hours = hours_to_reach(as_test[fpa_label], target, "cpu_hours")
        ratio = fpa_hours / grpo_hours if grpo_hours else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(f"| {s} | {100 * target:.1f} | {grpo_hours:.4f} | {fpa_hours:.4f} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", f"Ratio over seeds: {spread(ratios, 1, 2)} (goal: at most 0.33, offline FPA at GRPO's plateau in a third of its CPU-hours).",
              "", "pass@1 in %; mean ± standard deviation over seeds, or per-seed values in seed order. plateau - start: the paired "
              "per-problem difference on the test split and its standard error over problems. at: the evaluated policy chosen on dev. "
              "GRPO's plateau is reached when at least "
              f"{PATIENCE} later evaluations did not beat it on dev; offline's when a later round did not. A target of "
              "0 hours is the start itself (a plateau no higher than the start)."]
    plot_accuracy_curves({label: {s: [{**p, "pass_at_1": test(p)} for p in points[label][s]] for s in seeds} for label in methods}, seeds,
                         "pass@1 (%) on the test split", f"tiny task, seeds {seeds}: one line per seed", results / "summary.png")
    return "\n".join(lines)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=500, help="training prompts (both pipelines)")
    parser.add_argument("--dev", type=int, default=500, help="dev problems (choices)")
    parser.add_argument("--test", type=int, default=2000, help="test problems (reported)")
    parser.add_argument("--samples", type=int, default=2, help="samples per problem in every evaluation")
    parser.add_argument("--grpo-steps", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="offline round cap")
    parser.add_argument("--out", type=Path, default=Path("runs/headline"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    base = load_config("tiny-cpu")
    policy = warm_start(base.policy.tiny, base.policy.sft, base.data.synthetic, seed=0, log=log).path  # one start for every run
    init_ray()
    cells = Cells(args.out, args.results)
    by_seed = {args.seeds[0]: run_seed(args.seeds[0], policy, args, cells, None)}
    tries = {name.split("-", 1)[1]: curve for name, curve in by_seed[args.seeds[0]].items()}
    grpo_choice = max(GRPO_TRIES, key=lambda name: max(dev(p) for p in tries[name]["points"]))
    log(f"== chosen on seed {args.seeds[0]}'s dev split: {grpo_choice}")
    for seed in args.seeds[1:]:
        by_seed[seed] = run_seed(seed, policy, args, cells, grpo_choice)
    text = summary(by_seed, grpo_choice, tries, args.results)
    (args.results / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
