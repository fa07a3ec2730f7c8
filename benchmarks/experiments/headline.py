"""The headline: offline FPA against online GRPO, test pass@1 against training node-hours, each
method tuned with the same budget on a seed that is not reported, FPA's own share beside it.

    python benchmarks/experiments/headline.py [--tune-seed 100] [--seeds 7 8 9 10 11] [--out runs/headline]
                                  [--results benchmarks/results/headline] [--resume] [--tuning-only]

Every run of a seed starts from that seed's warm-started tiny policy (configs/tiny-cpu.yaml's, built
and cached by the first run that needs it, not charged) and is evaluated on two splits of the
synthetic task, disjoint from the training prompts and from each other: dev (`--dev` problems) for
every choice, test (`--test` problems, reported seeds only) for every reported figure, at
`--samples` samples per problem, T=0.7, with the same sampling seeds for every policy of a seed.
GRPO runs in the testbed grpo_testbed.py chose on dev, where it learns (GRPO_BASE); the offline
method in configs/tiny-cpu.yaml's recipe.

Cost: node-hours, the cluster's hosts x wall time of every training stage (fpa_ray.accounting): both
methods are charged the whole machine for every second they train, whatever they use of it (here one
host: node-hours are training wall-clock hours). Warm start and evaluation are charged to neither.

Tuning, on `--tune-seed` only (its figures are never reported as results): each method gets
len(GRPO_TRIES) == len(OFFLINE_TRIES) tries over its main knobs (GRPO: lr over a decade either side of
its default, prompts per step, group size, KL; offline FPA-RPO: lr over the same span, FPA's lambda,
RPO's beta), and keeps the try whose plateau (the evaluated policy with the best dev pass@1) is best.
The reported seeds run the choices only: GRPO, offline FPA, and the same offline recipe without FPA
(`plain`: FPA's own share of the gain).

Evaluation spacing: GRPO keeps a policy every `--eval-every` steps, the offline learner at the end of
every round (and every `--snapshot-every` learner steps if asked); all are evaluated. The defaults
space both about one node-minute apart, so neither gets more chances to touch a target by noise; the
summary gives each method's median node-hours between evaluations, so the reader can see they are alike.

The figure, per reported seed: the target is the lower of GRPO's and offline FPA's plateaus on test;
it counts only if it is at least 2 paired standard errors above the start (else that seed has no
ratio, and the summary says so). The node-hours each method needs to reach it are interpolated
between evaluations (fpa_ray.compare.cost_to_reach); the ratio offline / GRPO is averaged over the
seeds that have one, with a 95% bootstrap interval over seeds and test problems
(fpa_ray.compare.ratio_with_interval).

Each finished run is one cell (`<results>/cells/<name>.json`: its curve.json, per_problem.json and
the command, commit, date and machine that measured it). A rerun measures afresh; with `--resume` it
reuses the recorded cells and the finished runs in `--out`, so a run cut short goes on where it
stopped, and the summary lists which cells were recorded earlier and where. Writes
`<results>/summary.md` and `summary.png`; with `--tuning-only`, `<results>/tuning.md` once the tuning
seed's cells are in, so a session that cannot afford the reported seeds still leaves its choice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from fpa_ray.cluster import init_ray
from fpa_ray.compare import SeedCurves, lower_plateau, plateau_gain, ratio_with_interval, seed_ratio
from fpa_ray.run_files import provenance
from seeded_runs import grpo_run, log, offline_run, plot_accuracy_curves, regenerate

# The GRPO testbed (benchmarks/experiments/grpo_testbed.py, chosen there on dev): configs/tiny-cpu-grpo.yaml with
# 128 fresh prompts x 8 samples per step at T=0.7, 2 updates of 512 per rollout, lr 5e-5, 40 steps.
GRPO_BASE = ["grpo.prompts_per_step=128", "learner.global_batch_size=512", "data.train.limit=20000", "sampler.temperature=0.7",
             "learner.lr=5e-5", "grpo.steps=40",
             # A try whose policy stops writing answers (lr 5e-4: 54% of a rollout unparseable) is scored, not stopped
             # by the verifier's health check; an offline round's verify stage keeps its default (it is shared per seed).
             "verifier.max_failure_share=1.0"]
GRPO_TRIES = {
    "grpo-lr5e-6": ["learner.lr=5e-6"],
    "grpo": [],
    "grpo-lr5e-4": ["learner.lr=5e-4"],
    # half the rollout and twice the steps: the same samples in all, evaluated after as many samples as the others
    "grpo-p64": ["grpo.prompts_per_step=64", "learner.global_batch_size=256", "grpo.steps=80", "grpo.eval_every=8"],
    "grpo-g16": ["sampler.n=16", "grpo.prompts_per_step=64"],  # groups of 16, the same samples per step
    "grpo-kl0.04": ["objective.params={clip_eps: 0.2, kl_coef: 0.04}"],
}
# Relative to configs/tiny-cpu.yaml (FPA-RPO, lr 1e-5, lambda 2, beta 0.1, divergence-cut pairs, 500 prompts per round).
OFFLINE_TRIES = {
    "fpa-rpo-lr1e-6": ["learner.lr=1e-6"],
    "fpa-rpo": [],
    "fpa-rpo-lr1e-4": ["learner.lr=1e-4"],
    "fpa-rpo-lam1": ["fpa.lam=1"],
    "fpa-rpo-lam4": ["fpa.lam=4"],
    "fpa-rpo-beta0.3": ["objective.params={beta: 0.3, alpha: 1.0}"],
}
PLAIN = ["fpa.enabled=false"]  # the chosen offline recipe without FPA
MIN_SE = 2.0  # a plateau is one when it is this many paired standard errors above the start on test
RESULTS = Path(__file__).resolve().parents[1] / "results" / "headline"


def common_overrides(seed: int, out: Path, args, reported: bool) -> list[str]:
    """Every run of a seed starts from that seed's warm start; tuning runs are scored on dev only, reported
    ones on dev (where their plateau is chosen) and test (what is reported)."""
    splits = [f"{{name: synthetic, split: dev, limit: {args.dev}, label: dev}}"]
    if reported:
        splits.append(f"{{name: synthetic, split: test, limit: {args.test}, label: test}}")
    return [f"seed={seed}", f"output_dir={out}", f"evaluation.samples={args.samples}", f"data.eval=[{', '.join(splits)}]"]


class Cells:
    """Finished runs by name: a run directory's curve.json and per_problem.json with what measured them,
    kept in the results folder as each finishes; recorded ones are read back only with `resume`."""

    def __init__(self, results: Path, resume: bool):
        self.dir, self.resume, self.recorded = results / "cells", resume, {}
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> dict | None:
        path = self.dir / f"{name}.json"
        if not (self.resume and path.exists()):
            return None
        cell = json.loads(path.read_text())
        self.recorded[name] = cell["provenance"]
        return cell

    def put(self, name: str, run_dir: Path) -> dict:
        cell = {"curve": json.loads((run_dir / "curve.json").read_text()), "per_problem": json.loads((run_dir / "per_problem.json").read_text()),
                "provenance": provenance()}
        (self.dir / f"{name}.json").write_text(json.dumps(cell))
        return cell


def offline_overrides(method: str, args) -> list[str]:
    tries = {**OFFLINE_TRIES, **{f"{name}-plain": [*o, *PLAIN] for name, o in OFFLINE_TRIES.items()}}
    snapshots = [f"learner.snapshot_every={args.snapshot_every}"] if args.snapshot_every else []
    return [*tries[method], f"rounds={args.rounds}", "rounds_patience=1", *snapshots]


def run_methods(seed: int, methods: list[str], args, cells: Cells, reported: bool) -> dict[str, dict]:
    """The seed's cells for `methods` (GRPO_TRIES and OFFLINE_TRIES names, an offline one with `-plain`)."""
    found = {method: cells.get(f"s{seed}-{method}") for method in methods}
    if all(found.values()):
        return found
    common = common_overrides(seed, args.out, args, reported)
    data_dir, _ = regenerate(seed, common)
    for method in methods:
        if found[method] is None:
            name = f"s{seed}-{method}"
            if method in GRPO_TRIES:
                # each GRPO run evaluates its start itself: its verifier settings differ from the seed's shared
                # offline data, whose evaluation records them among its inputs (the same seeded samples, the same score)
                run_dir = grpo_run(name, [*GRPO_BASE, f"grpo.eval_every={args.eval_every}", *GRPO_TRIES[method]], common, args.out, args.resume)
            else:
                run_dir = offline_run(name, offline_overrides(method, args), common, args.out, data_dir, args.resume)
            found[method] = cells.put(name, run_dir)
    return found


def on(point: dict, split: str) -> dict:
    """A curve point's figures on `split`: its own where the run was scored on that split alone (tuning: dev)."""
    return point["benchmarks"][split] if "benchmarks" in point else point


def scored(point: dict, split: str) -> dict[str, float]:
    """A per_problem.json point's per-problem pass@1 on `split` (alone: the point's own)."""
    return point["benchmarks"].get(split) or point["per_problem"]


def dev(point: dict) -> float:
    return on(point, "dev")["pass_at_1"]


def test(point: dict) -> float:
    return on(point, "test")["pass_at_1"]


def plateau_index(cell: dict) -> int:
    """The evaluated policy with the best dev pass@1 (the start's included; the first of ties)."""
    values = [dev(p) for p in cell["curve"]["points"]]
    return values.index(max(values))


def problem_scores(cell: dict, split: str, problems: list[str]) -> np.ndarray:
    """Per-problem pass@1 of each evaluated policy (policies x problems, in `problems`' order)."""
    return np.array([[scored(point, split)[p] for p in problems] for point in cell["per_problem"]["points"]])


def seed_curves(cells: dict[str, dict], split: str = "test") -> SeedCurves:
    problems = sorted(scored(cells[next(iter(cells))]["per_problem"]["points"][0], split))
    return SeedCurves(costs={m: np.array([p["node_hours"] for p in c["curve"]["points"]]) for m, c in cells.items()},
                      scores={m: problem_scores(c, split, problems) for m, c in cells.items()},
                      plateaus={m: plateau_index(c) for m, c in cells.items()})


def choose(tries: dict[str, dict]) -> dict[str, str]:
    """Per method the try with the best dev pass@1 at its plateau (the first listed of ties)."""
    best = {name: dev(cell["curve"]["points"][plateau_index(cell)]) for name, cell in tries.items()}
    return {"offline": max(OFFLINE_TRIES, key=best.__getitem__), "grpo": max(GRPO_TRIES, key=best.__getitem__)}


def spacing(cell: dict) -> float:
    """Median node-hours between consecutive evaluations."""
    costs = [p["node_hours"] for p in cell["curve"]["points"]]
    return statistics.median(b - a for a, b in zip(costs, costs[1:])) if len(costs) > 1 else float("nan")


def versus(cell: dict, split: str, index: int) -> str:
    """Policy `index`'s paired per-problem difference from the start on `split`, and its standard error, in points."""
    problems = sorted(scored(cell["per_problem"]["points"][0], split))
    gain, se = plateau_gain(problem_scores(cell, split, problems), index)
    return f"{100 * gain:+.1f} ({100 * se:.1f})"


def to_target(curve: SeedCurves, method: str) -> tuple[float, dict[str, str], str]:
    """The lower of `method`'s and GRPO's plateaus on test, each one's node-hours to it, and seed_ratio's ratio."""
    _, target, reach = lower_plateau(curve, (method, "grpo"))
    ratio = seed_ratio(curve, method, "grpo", min_se=MIN_SE)
    return target, {m: "not reached" if h is None else f"{h:.4f}" for m, h in reach.items()}, "-" if ratio is None else f"{ratio:.2f}"


def paired(diffs: np.ndarray) -> str:
    """A per-problem difference's mean and standard error, in points."""
    return f"{100 * diffs.mean():+.1f} ({100 * diffs.std(ddof=1) / np.sqrt(len(diffs)):.1f})"


def label(method: str) -> str:
    if method.endswith("-plain"):
        return f"offline {method.removesuffix('-plain').removeprefix('fpa-').upper()} without FPA"
    return f"offline FPA ({method})" if method in OFFLINE_TRIES else f"GRPO ({method})"


def tuning_rows(tries: dict[str, dict], overrides: dict[str, list[str]]) -> list[str]:
    rows = []
    for method, cell in tries.items():
        points, index = cell["curve"]["points"], plateau_index(cell)
        rows.append(f"| {label(method)} | {' '.join(overrides[method]) or '(the config)'} | {100 * dev(points[0]):.1f} | {100 * dev(points[index]):.1f} "
                    f"| {versus(cell, 'dev', index)} | {points[index]['point']} | {points[index]['node_hours']:.4f} | {points[-1]['node_hours']:.4f} |")
    return rows


def reported_row(method: str, seed: int, cell: dict) -> str:
    points, index = cell["curve"]["points"], plateau_index(cell)
    problems = sorted(scored(cell["per_problem"]["points"][0], "test"))
    gain, se = plateau_gain(problem_scores(cell, "test", problems), index)
    resolved = "yes" if gain > 0 and gain >= MIN_SE * se else "no"
    return (f"| {label(method)} | {seed} | {100 * test(points[0]):.1f} | {100 * test(points[index]):.1f} | {versus(cell, 'test', index)} | {resolved} "
            f"| {points[index]['point']} | {points[index]['node_hours']:.4f} | {spacing(cell):.4f} |")


def measured_by(cells: Cells) -> list[str]:
    """Where the summary's figures come from: this invocation, and any cell recorded by an earlier one."""
    now = provenance()
    lines = [f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}."]
    for name, where in sorted(cells.recorded.items()):
        lines.append(f"- cell {name}: recorded earlier by `{where['command']}` at {where['commit']}, {where['date']}, on {where['machine']}")
    return lines


def tuning(tuned: dict[str, dict], choice: dict[str, str], args) -> list[str]:
    header = "| method | overrides | start (dev) | plateau (dev) | plateau - start, dev (SE) | at | node-hours to the plateau | node-hours run |"
    return [f"## Tuning on seed {args.tune_seed}, dev split ({len(GRPO_TRIES)} tries per method; not reported as results)", "",
            header, "|---|---|---|---|---|---|---|---|",
            *tuning_rows({m: tuned[m] for m in OFFLINE_TRIES}, OFFLINE_TRIES), *tuning_rows({m: tuned[m] for m in GRPO_TRIES}, GRPO_TRIES),
            "", f"GRPO's overrides are relative to {' '.join(GRPO_BASE)} on configs/tiny-cpu-grpo.yaml; the offline ones to configs/tiny-cpu.yaml.",
            f"Chosen: {label(choice['offline'])}, {label(choice['grpo'])}.",
            "Tuning runs' node-hours chose nothing (the plateau's dev pass@1 did) and some shared the machine with other work "
            "while they ran; the reported seeds' runs are timed alone.", ""]


def summary(tuned: dict[str, dict], choice: dict[str, str], reported: dict[int, dict[str, dict]], args, cells: Cells) -> str:
    grpo, offline = choice["grpo"], choice["offline"]
    plain = f"{offline}-plain"
    lines = [f"# Offline FPA vs online GRPO, test pass@1 against training node-hours (tuned on seed {args.tune_seed}, reported on seeds {args.seeds})",
             "", *measured_by(cells), "", *tuning(tuned, choice, args),
             "## The choices on the reported seeds, test split", "",
             "| method | seed | start | plateau | plateau - start (SE) | a plateau (>= 2 SE)? | at (chosen on dev) | node-hours to it | median node-hours between evaluations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in (grpo, offline, plain):
        lines += [reported_row(method, seed, reported[seed][method]) for seed in args.seeds]
    lines += ["", "| seed | target: the lower plateau (test) | GRPO: node-hours to it | offline FPA | ratio "
              "| without FPA: its target, node-hours to it / GRPO's = ratio | FPA - without FPA at their plateaus (SE) "
              "| after round 1: same pairs, same steps (SE) |",
              "|---|---|---|---|---|---|---|---|"]
    curves = {seed: seed_curves({"grpo": reported[seed][grpo], "offline": reported[seed][offline], "plain": reported[seed][plain]}) for seed in args.seeds}
    shares: dict[str, list[float]] = {"at their plateaus": [], "after round 1": []}  # FPA - without FPA per seed, in points
    for seed, curve in curves.items():
        target, hours, ratio = to_target(curve, "offline")
        plain_target, plain_hours, plain_ratio = to_target(curve, "plain")
        # Round 1 trains both on the seed's one set of pairs for the same steps; later rounds' pairs come from each one's own policy.
        diffs = {"at their plateaus": curve.scores["offline"][curve.plateaus["offline"]] - curve.scores["plain"][curve.plateaus["plain"]],
                 "after round 1": curve.scores["offline"][1] - curve.scores["plain"][1]}
        for name, diff in diffs.items():
            shares[name].append(100 * diff.mean())
        lines.append(f"| {seed} | {100 * target:.1f} | {hours['grpo']} | {hours['offline']} | {ratio} "
                     f"| {100 * plain_target:.1f}: {plain_hours['plain']} / {plain_hours['grpo']} = {plain_ratio} "
                     f"| {paired(diffs['at their plateaus'])} | {paired(diffs['after round 1'])} |")
    lines.append("")
    for method, name in (("offline", label(offline)), ("plain", label(plain))):
        result = ratio_with_interval(list(curves.values()), method, "grpo")
        defined = sum(r is not None for r in result["per_seed"])
        if result["ratio"] is None:
            lines.append(f"- {name} / GRPO: no ratio: in no seed is the lower plateau {MIN_SE:g} paired SE above the start (the curves are in summary.png).")
        else:
            lines.append(f"- {name} / GRPO node-hours to the lower plateau: {result['ratio']:.2f}, 95% bootstrap interval "
                         f"[{result['low']:.2f}, {result['high']:.2f}] over seeds and test problems ({defined} of {len(args.seeds)} seeds have a ratio).")
    above = [100 * (c.scores["grpo"][c.plateaus["grpo"]] - c.scores["offline"][c.plateaus["offline"]]).mean() for c in curves.values()]
    lines.append(f"- GRPO's plateau - offline FPA's plateau (test), mean over the {len(above)} seeds: {statistics.mean(above):+.1f} points"
                 + (f", SE over seeds {statistics.stdev(above) / np.sqrt(len(above)):.1f}" if len(above) > 1 else "")
                 + f" (per seed: {', '.join(f'{a:+.1f}' for a in above)}): the ratio compares the cost of the lower of the two.")
    for name, per_seed in shares.items():
        spread = f", SE over seeds {statistics.stdev(per_seed) / np.sqrt(len(per_seed)):.1f}" if len(per_seed) > 1 else ""
        lines.append(f"- FPA - without FPA {name}, mean over the {len(per_seed)} seeds: {statistics.mean(per_seed):+.1f} points{spread}.")
    lines += ["", "pass@1 in %. plateau: the evaluated policy with the best dev pass@1 (the start's included); plateau - start: the paired "
              "per-problem difference and its standard error over problems. node-hours to a pass@1: linear between the last evaluation below it "
              "and the first at or above it (fpa_ray.compare.cost_to_reach). FPA - without FPA: the paired per-problem difference on test, "
              "of their plateaus (each stops after a round that does not beat its best dev pass@1) and after round 1, where both have "
              "trained on the same pairs for the same steps."]
    plot_accuracy_curves({label(m): {s: [{**p, "pass_at_1": test(p)} for p in reported[s][m]["curve"]["points"]] for s in args.seeds}
                          for m in (grpo, offline, plain)}, args.seeds, "pass@1 (%) on the test split",
                         f"tiny task, seeds {args.seeds}: one line per seed", args.results / "summary.png", key="node_hours")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-seed", type=int, default=100, help="the seed every choice is made on; never reported")
    # Seeds 7-11: test streams no run had scored before this experiment (ablations chose on seeds 0-2's, the
    # GRPO testbed reported seeds 2-6's).
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11], help="reported seeds: the choices only")
    parser.add_argument("--dev", type=int, default=500, help="dev problems (choices)")
    parser.add_argument("--test", type=int, default=2000, help="test problems (reported)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem in every evaluation")
    # Equal spacing: 4 GRPO steps (4,096 samples) cost about what one offline round does here (~1 node-minute each).
    parser.add_argument("--eval-every", type=int, default=4, help="GRPO: a policy kept and evaluated every this many steps")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="offline: also a policy kept and evaluated every this many learner steps (0: at the end of each round only)")
    parser.add_argument("--rounds", type=int, default=5, help="offline round cap")
    parser.add_argument("--out", type=Path, default=Path("runs/headline"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="reuse the recorded cells and the finished runs in --out")
    parser.add_argument("--tuning-only", action="store_true", help="stop after the tuning seed, writing tuning.md")
    args = parser.parse_args()
    if args.tune_seed in args.seeds:
        parser.error("--tune-seed must not be one of the reported --seeds")
    args.out = args.out.resolve()
    init_ray()
    cells = Cells(args.results, args.resume)
    tuned = run_methods(args.tune_seed, [*OFFLINE_TRIES, *GRPO_TRIES], args, cells, reported=False)
    choice = choose(tuned)
    log(f"== chosen on seed {args.tune_seed}'s dev split: {choice}")
    if args.tuning_only:
        text = "\n".join([f"# Offline FPA vs online GRPO: tuning on seed {args.tune_seed}", "", *measured_by(cells), "", *tuning(tuned, choice, args)])
        (args.results / "tuning.md").write_text(text)
        print(text)
        return 0
    reported = {seed: run_methods(seed, [choice["grpo"], choice["offline"], f"{choice['offline']}-plain"], args, cells, reported=True)
                for seed in args.seeds}
    text = summary(tuned, choice, reported, args, cells)
    (args.results / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
