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
Seeds 1 and 2 run the two choices only. Each finished run is one cell (its run
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

    def __init__(self, results: Path):
        self.dir = results / "cells"
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


def run_seed(seed: int, policy: Path, args, cells: Cells, choice: dict[str, str] | None) -> dict[str, dict]:
    """The seed's cells by method: every try (choice None: the first seed) or the chosen ones."""
    common = common_overrides(seed, args.out, policy, args)
    offline = list(OFFLINE) if choice is None else [choice["offline"]]
    grpo = list(GRPO_TRIES) if choice is None else [choice["grpo"]]
    curves = {method: cells.get(f"s{seed}-{method}") for method in [*offline, *grpo]}
    if all(curves.values()):
        return curves
    data_dir, _ = regenerate(seed, common)
    for method in offline:
        if curves[method] is None:
            run_dir = offline_run(f"s{seed}-{method}", [*OFFLINE[method], f"rounds={args.rounds}", "rounds_patience=1"], common, args.out, data_dir)
            curves[method] = cells.put(f"s{seed}-{method}", run_dir)
    for method in grpo:
        if curves[method] is None:
            curves[method] = cells.put(f"s{seed}-{method}", grpo_cell(f"s{seed}-{method}", GRPO_TRIES[method], common, args, data_dir))
    return curves


def choose(tries: dict[str, dict]) -> dict[str, str]:
    """Per method the try with the best dev pass@1 at its plateau."""
    best = {name: max(dev(p) for p in curve["points"]) for name, curve in tries.items()}
    return {"offline": max(OFFLINE, key=best.__getitem__), "grpo": max(GRPO_TRIES, key=best.__getitem__)}


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


def label(method: str) -> str:
    return {"fpa-rpo": "offline FPA-RPO", "rpo": "offline RPO (no FPA)"}.get(method, "GRPO (" + method.removeprefix("grpo-") + ")")


def plateau_rows(curves: dict[int, dict], method: str) -> str:
    """One table row: the method's start, plateau and its cost over the seeds of `curves`."""
    seeds = sorted(curves)
    points = {s: curves[s]["points"] for s in seeds}
    rows = [plateau(points[s]) for s in seeds]
    reached = ["yes" if r["after"] >= (1 if method in OFFLINE else PATIENCE) else "no" for r in rows]
    return (f"| {label(method)} | {', '.join(map(str, seeds))} | {spread([test(points[s][0]) for s in seeds])} "
            f"| {spread([dev(r['point']) for r in rows])} | {spread([test(r['point']) for r in rows])} "
            f"| {', '.join(versus(r['point']) for r in rows)} | {', '.join(r['point']['point'] for r in rows)} | {', '.join(reached)} "
            f"| {spread([r['point']['cpu_hours'] for r in rows], 1, 4)} | {spread([points[s][-1]['cpu_hours'] for s in seeds], 1, 4)} |")


def summary(by_seed: dict[int, dict[str, dict]], choice: dict[str, str], results: Path) -> str:
    seeds = sorted(by_seed)
    first = seeds[0]
    header = ["| method | seeds | start (test) | plateau (dev) | plateau (test) | plateau - start, test (SE) | at | plateau reached "
              "| training CPU-hours to the plateau | CPU-hours run |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines = [f"# Offline vs online GRPO at their plateaus (seeds {seeds})", "",
             f"## The tries (seed {first}; chosen on dev: {choice['offline']}, {choice['grpo']})", "", *header]
    lines += [plateau_rows({first: by_seed[first][m]}, m) for m in [*OFFLINE, *GRPO_TRIES]]
    lines += ["", "## The chosen methods over seeds", "", *header]
    lines += [plateau_rows({s: by_seed[s][choice[kind]] for s in seeds}, choice[kind]) for kind in ("grpo", "offline")]
    grpo, offline = label(choice["grpo"]), label(choice["offline"])
    lines += ["", f"| seed | lower plateau (test) | {grpo}: CPU-hours to it | {offline}: CPU-hours to it | ratio offline / GRPO |",
              "|---|---|---|---|---|"]
    ratios = []
    for s in seeds:
        as_test = {kind: [{**p, "pass_at_1": test(p)} for p in by_seed[s][choice[kind]]["points"]] for kind in ("grpo", "offline")}
        target = min(test(plateau(by_seed[s][choice[kind]]["points"])["point"]) for kind in ("grpo", "offline"))
        hours = {kind: hours_to_reach(as_test[kind], target, "cpu_hours") for kind in as_test}
        ratio = hours["offline"] / hours["grpo"] if hours["grpo"] else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(f"| {s} | {100 * target:.1f} | {hours['grpo']:.4f} | {hours['offline']:.4f} | {'-' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", f"Ratio over seeds: {spread(ratios, 1, 2)} (goal: at most 0.33, offline FPA at GRPO's plateau in a third of its CPU-hours).",
              "", "pass@1 in %; mean ± standard deviation over seeds, or per-seed values in seed order. plateau: the evaluated policy with "
              "the best dev pass@1 (the start's included); plateau - start: the paired per-problem difference on the test split and its "
              f"standard error over problems. GRPO's plateau is reached when at least {PATIENCE} later evaluations did not beat it on dev; "
              "offline's when a later round did not. CPU-hours to the lower plateau: the first evaluated policy at or above it on test "
              "(0: the start itself is as good)."]
    plot_accuracy_curves({label(choice[kind]): {s: [{**p, "pass_at_1": test(p)} for p in by_seed[s][choice[kind]]["points"]] for s in seeds}
                          for kind in ("grpo", "offline")}, seeds, "pass@1 (%) on the test split",
                         f"tiny task, seeds {seeds}: one line per seed", results / "summary.png")
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
    cells = Cells(args.results)
    first, rest = args.seeds[0], args.seeds[1:]
    by_seed = {first: run_seed(first, policy, args, cells, None)}
    choice = choose(by_seed[first])
    log(f"== chosen on seed {first}'s dev split: {choice}")
    for seed in rest:
        by_seed[seed] = run_seed(seed, policy, args, cells, choice)
    text = summary(by_seed, choice, args.results)
    (args.results / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
