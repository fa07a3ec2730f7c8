"""The paper's ablations of offline FPA at tiny scale, one command per group, over several seeds.

    python benchmarks/experiments/ablations.py GROUP [--seeds 0 1 2] [--objective dpo] [--out runs/ablations]

Groups (each cell is one offline run of configs/tiny-cpu.yaml with a few overrides):
  objectives  dpo, rpo, kto, simper, offline_rl, each with and without FPA (lambda 1, exact)
  lambda      --objective with lambda 0 (= the base objective), 0.5, 1, 2, 10
  targeting   --objective plain, and FPA on both / the rejected only / the chosen only
  long        --objective with and without FPA for 4 epochs, evaluated after each
  rounds      --objective with and without FPA for 3 rounds, data regenerated from the latest policy
  pairs       --objective with and without FPA, at most 1, 4 (the default) or 16 pairs per prompt, and 4 pairs
              whose rejected response is cut 4 tokens after it departs from the chosen one (build.rejected_cut)
  recipe      candidates for configs/tiny-cpu.yaml: --objective plain and FPA at lambda 2, each with and
              without the divergence cut
  mechanism   where gradient entanglement should arise: DPO and SimPER, with and without FPA, on uncut pairs for
              4 epochs, cos(g_w, g_l) over every parameter as well as the LM head on 64 probe pairs, 4 times an epoch

Every cell of a seed starts from the same warm-started policy and trains on the same regenerated
data (500 prompts x 8 samples at T=1, fpa_ray benchmarks/experiments/seeded_runs.py); a cell shared by two
groups (e.g. FPA-DPO at lambda 1) is run once. Evaluation: 300 problems of the dev split (choices
are made on it; the test split is left to the reported results) x 8 samples at T=0.7 (pass@1
averaged over k=8), the same sampling seeds for every policy of a seed. Writes
benchmarks/results/ablations/<group>.md (table) and <group>-accuracy.png, <group>-coefficients.png
(C_w, C_l over steps), <group>-entanglement.png (cos(g_w, g_l) and the norms, at the steps that
logged them) and, for long and rounds, <group>-curve.png (accuracy over training).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from fpa_ray.cluster import init_ray
from fpa_ray.config import load_config
from fpa_ray.evaluation import total_gain_loss
from fpa_ray.run_files import provenance
from fpa_ray.warmstart import warm_start
from seeded_runs import curve, log, offline_run, plot_accuracy_curves, regenerate

OBJECTIVE_PARAMS = {"dpo": "{beta: 0.1}", "rpo": "{beta: 0.1, alpha: 1.0}", "kto": "{beta: 0.1}", "simper": "{}", "offline_rl": "{}"}
PAIRED = {"dpo", "rpo", "simper"}
GROUPS = ("objectives", "lambda", "targeting", "long", "rounds", "pairs", "recipe", "mechanism")
LONG_EPOCHS, ROUNDS = 4, 3
PROBE_PAIRS, PROBES_PER_EPOCH = 64, 4  # the mechanism group's entanglement diagnostic
SMOOTH = 5  # optimizer steps per running mean in the coefficient plots
RESULTS = Path(__file__).resolve().parents[1] / "results" / "ablations"


def cell(objective: str, fpa: bool, lam: float = 1.0, apply_to: str = "both", epochs: int = 1, rounds: int = 1,
         pairs: int = 4, cut: str = "none", probes: bool = False) -> tuple[str, dict]:
    """A cell's run name (the same settings give the same name, whichever group asks) and its settings."""
    name = ("fpa-" if fpa and lam else "") + objective
    if fpa and lam not in (0, 1):
        name += f"-lam{lam:g}"
    if fpa and lam and apply_to != "both":
        name += f"-{apply_to}-only"
    if epochs != 1:
        name += f"-{epochs}ep"
    if rounds != 1:
        name += f"-{rounds}rounds"
    if pairs != 4:
        name += f"-{pairs}pairs"
    if cut != "none":
        name += f"-{cut}"
    if probes:
        name += "-probed"
    return name, {"objective": objective, "fpa": bool(fpa and lam), "lam": lam, "apply_to": apply_to, "epochs": epochs,
                  "rounds": rounds, "pairs": pairs, "cut": cut, "probes": probes}


def cells(group: str, objective: str) -> list[tuple[str, dict]]:
    both = (False, True)
    if group == "objectives":
        return [cell(o, fpa) for o in OBJECTIVE_PARAMS for fpa in both]
    if group == "lambda":
        return [cell(objective, True, lam) for lam in (0, 0.5, 1, 2, 10)]
    if group == "targeting":
        return [cell(objective, False), *(cell(objective, True, apply_to=a) for a in ("both", "rejected", "chosen"))]
    if group == "long":
        return [cell(objective, fpa, epochs=LONG_EPOCHS) for fpa in both]
    if group == "rounds":
        return [cell(objective, fpa, rounds=ROUNDS) for fpa in both]
    if group == "pairs":
        return [*(cell(objective, fpa, pairs=p) for p in (1, 4, 16) for fpa in both), *(cell(objective, fpa, cut="divergence") for fpa in both)]
    if group == "recipe":
        return [cell(objective, fpa, lam, cut=cut) for cut in ("none", "divergence") for fpa, lam in ((False, 1.0), (True, 2.0))]
    if group == "mechanism":
        return [cell(o, fpa, epochs=LONG_EPOCHS, probes=True) for o in ("dpo", "simper") for fpa in both]
    raise ValueError(f"unknown group {group!r}; known: {', '.join(GROUPS)}")


def overrides(settings: dict, steps_per_epoch: int) -> list[str]:
    result = [f"objective.name={settings['objective']}", f"objective.params={OBJECTIVE_PARAMS[settings['objective']]}",
              f"fpa.enabled={str(settings['fpa']).lower()}", f"fpa.lam={settings['lam'] if settings['fpa'] else 1.0}",
              f"fpa.apply_to={settings['apply_to']}", f"learner.epochs={settings['epochs']}", f"rounds={settings['rounds']}",
              f"build.pairs_per_prompt={settings['pairs']}", f"build.rejected_cut={settings['cut']}"]
    if settings["epochs"] > 1:
        result.append(f"learner.snapshot_every={steps_per_epoch}")
    if settings.get("probes"):  # every parameter's gradient, on PROBE_PAIRS pairs, PROBES_PER_EPOCH times an epoch
        result += ["learner.diagnostics_scope=all", f"learner.diagnostics_rows={PROBE_PAIRS}",
                   f"learner.diagnostics_every={max(1, steps_per_epoch // PROBES_PER_EPOCH)}"]
    return result


def steps_per_epoch(settings: dict, data_dir: Path, pairs: int, batch: int) -> int:
    rows = pairs if settings["objective"] in PAIRED else json.loads((data_dir / "round_1" / "verified" / "manifest.json").read_text())["checks"]
    return max(1, math.ceil(rows / batch))


# --- reading a finished run ------------------------------------------------------------------


def train_metrics(run_dir: Path) -> list[dict]:
    """Every optimizer step of every round, in order, numbered across rounds."""
    steps: list[dict] = []
    for train_dir in sorted(run_dir.glob("round_*/train"), key=lambda p: int(p.parent.name.split("_")[1])):
        for line in (train_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "C_w" in row or "C_l" in row:
                steps.append({**row, "global_step": len(steps) + 1})
    return steps


def run_figures(run_dir: Path) -> dict:
    points = curve(run_dir)["points"]
    config = load_config(str(run_dir / "config.yaml"))
    first = json.loads((run_dir / "eval_0" / "manifest.json").read_text())["score"]
    last = json.loads((run_dir / f"eval_{config.rounds}" / "manifest.json").read_text())["score"]
    change = total_gain_loss(first["per_problem"], last["per_problem"], config.evaluation.solved_threshold)
    steps = train_metrics(run_dir)
    window = max(1, len(steps) // 10)

    def mean_of(key: str, rows: list[dict]) -> float:
        values = [r[key] for r in rows if key in r]
        return statistics.mean(values) if values else float("nan")

    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    probed = [r for r in steps if "grad_cosine" in r]
    # Every epoch of a one-round run sees the same rows, so its first and last epoch's means compare like with
    # like, where the first and last tenth of the steps hold different rows (as do a later round's epochs).
    epoch = len(steps) // config.learner.epochs if config.learner.epochs > 1 and config.rounds == 1 else 0
    return {
        **{f"{key}_{where}": mean_of(key, rows) if epoch else float("nan") for key in ("logp_chosen", "logp_rejected")
           for where, rows in (("epoch_first", steps[:epoch]), ("epoch_last", steps[-epoch:] if epoch else []))},
        **{f"{key}_{where}": rows[index][key] if rows and key in rows[index] else float("nan")
           for key in ("grad_cosine", "grad_cosine_all") for where, rows, index in (("probe_first", probed, 0), ("probe_last", probed, -1))},
        "start": points[0]["pass_at_1"], "final": points[-1]["pass_at_1"], "best": max(p["pass_at_1"] for p in points[1:]),
        "gain": change["total_gain"], "loss": change["total_loss"], "training_cpu_hours": points[-1]["cpu_hours"],
        "total_cpu_hours": sum(e["cpus"] * (e["end"] - e["start"]) for e in ledger) / 3600,
        **{f"{key}_{where}": mean_of(key, rows) for key in ("C_w", "C_l", "logp_chosen", "logp_rejected")
           for where, rows in (("first", steps[:window]), ("last", steps[-window:]))},
        "points": points, "steps": steps,
    }


# --- the table and the plots -------------------------------------------------------------------


def spread(values: list[float], scale: float = 100, digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(group: str, figures: dict[str, dict[int, dict]], seeds: list[int], written_by: str) -> str:
    probed = any(not math.isnan(by_seed[s]["grad_cosine_all_probe_first"]) for by_seed in figures.values() for s in seeds)
    epochs = any(not math.isnan(by_seed[s]["logp_chosen_epoch_first"]) for by_seed in figures.values() for s in seeds)
    extra = (" | chosen log-prob, first -> last epoch | rejected log-prob, first -> last epoch" if epochs else "") + (
        " | cos(g_w, g_l), LM head, first -> last probe | cos(g_w, g_l), every parameter, first -> last probe" if probed else "")
    lines = [f"# Ablation: {group}", "", written_by, "",
             "| cell | start | final pass@1 | final - start (points) | best trained | Total Gain / Loss | C_w first -> last "
             f"| C_l first -> last | chosen log-prob first -> last | rejected log-prob first -> last{extra} | training CPU-h | total CPU-h |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if epochs else "") + ("---|---|" if probed else "") + "---|---|"]
    for name, by_seed in figures.items():
        rows = [by_seed[s] for s in seeds]

        def pair(key: str, digits: int = 3, rows: list[dict] = rows, first: str = "_first", last: str = "_last") -> str:
            return f"{spread([r[key + first] for r in rows], 1, digits)} -> {spread([r[key + last] for r in rows], 1, digits)}"

        by_epoch = (f" | {pair('logp_chosen', 2, first='_epoch_first', last='_epoch_last')}"
                    f" | {pair('logp_rejected', 2, first='_epoch_first', last='_epoch_last')}") if epochs else ""
        cosines = by_epoch + ((f" | {pair('grad_cosine', 2, first='_probe_first', last='_probe_last')}"
                               f" | {pair('grad_cosine_all', 2, first='_probe_first', last='_probe_last')}") if probed else "")
        lines.append(
            f"| {name} | {spread([r['start'] for r in rows])} | {spread([r['final'] for r in rows])} "
            f"| {spread([r['final'] - r['start'] for r in rows])} | {spread([r['best'] for r in rows])} "
            f"| {spread([r['gain'] for r in rows], 1)} / {spread([r['loss'] for r in rows], 1)} | {pair('C_w')} | {pair('C_l')} "
            f"| {pair('logp_chosen', 2)} | {pair('logp_rejected', 2)}{cosines} | {spread([r['training_cpu_hours'] for r in rows], 1, 4)} "
            f"| {spread([r['total_cpu_hours'] for r in rows], 1, 4)} |"
        )
    per_seed = ["", "Final pass@1 per seed (" + ", ".join(map(str, seeds)) + "):", ""]
    per_seed += [f"- {name}: " + ", ".join(f"{100 * by_seed[s]['final']:.1f}" for s in seeds) for name, by_seed in figures.items()]
    twins = [(name, name[len("fpa-"):]) for name in figures if name.startswith("fpa-") and name[len("fpa-"):] in figures]
    if twins:
        per_seed += ["", "FPA minus the same objective without it, per seed (mean ± standard deviation over seeds):", ""]
    for name, plain in twins:
        delta = {key: [figures[name][s][key] - figures[plain][s][key] for s in seeds]
                 for key in ("final", "logp_chosen_last", "logp_chosen_epoch_last", "grad_cosine_all_probe_last")}
        per_seed.append(f"- {name} - {plain}: final pass@1 {spread(delta['final'])} points ("
                        + ", ".join(f"{100 * d:+.1f}" for d in delta["final"]) + "); chosen log-prob, last tenth "
                        f"{spread(delta['logp_chosen_last'], 1, 2)}, last epoch {spread(delta['logp_chosen_epoch_last'], 1, 2)}; "
                        f"cos(g_w, g_l) over every parameter at the last probe {spread(delta['grad_cosine_all_probe_last'], 1, 2)}")
    lines += per_seed + [
        "", f"Seeds {seeds}; pass@1 in %, mean ± standard deviation over seeds. Evaluation: 300 dev-split problems x 8 samples at "
        "T=0.7, the same sampling seeds for every policy of a seed, so 'final - start' is a paired difference. Total Gain / Loss: "
        "problems crossing pass@1 >= 0.5 between the start and the final policy. C_w, C_l: the objective's gradient coefficients "
        "on the chosen / rejected log-prob (with FPA: evaluated at the approximated future policy), mean over the first and the "
        "last tenth of the optimizer steps; 'first -> last epoch': the mean over the first and the last epoch's steps, which "
        "see the same rows. Log-probs are summed over a response's tokens, the batch mean at the step's starting weights. Training CPU-h: resources x wall of data generation, verification, build and training "
        "(fpa_ray.accounting); total CPU-h adds the evaluations and warm-start bookkeeping the run charged.",
    ]
    return "\n".join(lines)


def plots(group: str, figures: dict[str, dict[int, dict]], seeds: list[int], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(figures)
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    for index, name in enumerate(names):
        deltas = [100 * (figures[name][s]["final"] - figures[name][s]["start"]) for s in seeds]
        axes.bar(index, statistics.mean(deltas), color="C1" if name.startswith("fpa-") else "C0", alpha=0.6)
        axes.scatter([index] * len(deltas), deltas, color="k", s=12, zorder=3)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("final - start pass@1 (points)")
    axes.set_title(f"{group}: mean over seeds {seeds} (bars), one dot per seed")
    figure.tight_layout()
    written.append(out / f"{group}-accuracy.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for index, name in enumerate(names):
        steps = figures[name][seeds[0]]["steps"]
        for axis, key in zip(axes, ("C_w", "C_l")):
            series = [[row.get(key, math.nan) for row in figures[name][s]["steps"]] for s in seeds]
            length = min(map(len, series))
            mean = [statistics.mean(values[i] for values in series) for i in range(length)]
            smooth = [statistics.mean(mean[max(0, i - SMOOTH + 1) : i + 1]) for i in range(length)]
            axis.plot([row["global_step"] for row in steps[:length]], smooth, color=f"C{index}", label=name, linewidth=1)
    for axis, key in zip(axes, ("C_w (chosen)", "C_l (rejected)")):
        axis.set_title(f"{key}: mean over seeds, running mean of {SMOOTH} steps", fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    written.append(out / f"{group}-coefficients.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    if any("grad_cosine" in row for name in names for row in figures[name][seeds[0]]["steps"]):
        written.append(out / f"{group}-entanglement.png")
        plot_entanglement(figures, seeds, group, written[-1])

    if any(len(figures[name][seeds[0]]["points"]) > 2 for name in names):
        written.append(out / f"{group}-curve.png")
        plot_accuracy_curves({name: {s: figures[name][s]["points"] for s in seeds} for name in names}, seeds,
                             "pass@1 (%), 300 problems x 8 samples", f"{group}: accuracy over training, one line per seed", written[-1])
    return written


def plot_entanglement(figures: dict[str, dict[int, dict]], seeds: list[int], group: str, path: Path) -> None:
    """cos(g_w, g_l), |g_w| and |g_l| on the LM head, and cos over every parameter where logged (docs/method.md
    section 8), at the steps that logged them, mean over seeds."""
    import matplotlib.pyplot as plt

    whole = any("grad_cosine_all" in row for name in figures for row in figures[name][seeds[0]]["steps"])
    keys = ("grad_cosine", "grad_norm_w", "grad_norm_l") + (("grad_cosine_all",) if whole else ())
    titles = ("cos(g_w, g_l), LM head", "|g_w| (chosen), LM head", "|g_l| (rejected), LM head") + (("cos(g_w, g_l), every parameter",) if whole else ())
    figure, axes = plt.subplots(1, len(keys), figsize=(4.7 * len(keys), 4.2), sharex=True)
    for index, name in enumerate(figures):
        runs = [[row for row in figures[name][s]["steps"] if "grad_cosine" in row] for s in seeds]
        length = min(map(len, runs))
        for axis, key in zip(axes, keys):
            mean = [statistics.mean(rows[i][key] for rows in runs) for i in range(length)]
            axis.plot([row["global_step"] for row in runs[0][:length]], mean, color=f"C{index}", label=name, linewidth=1, marker=".")
    for axis, title in zip(axes, titles):
        axis.set_title(f"{title}: mean over seeds {seeds}", fontsize=9)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{group}: gradient entanglement (learner.diagnostics_every)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[1])
    parser.add_argument("group", choices=GROUPS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objective", choices=sorted(OBJECTIVE_PARAMS), default="dpo", help="the objective of the single-objective groups")
    parser.add_argument("--eval-problems", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"), help="run directories (reused when finished)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the table and plots go")
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs in --out and go on with the others")
    args = parser.parse_args()
    out, results = args.out.resolve(), args.results
    results.mkdir(parents=True, exist_ok=True)
    base = load_config("tiny-cpu")
    policy = warm_start(base.policy.tiny, base.policy.sft, base.data.synthetic, seed=0, log=log).path  # one start for every run
    init_ray()
    plan = cells(args.group, args.objective)
    figures: dict[str, dict[int, dict]] = {name: {} for name, _ in plan}
    for seed in args.seeds:
        common = [f"seed={seed}", f"output_dir={out}", f"policy.name_or_path={policy}", f"evaluation.samples={args.eval_samples}",
                  f"data.eval=[{{name: synthetic, split: dev, limit: {args.eval_problems}}}]"]
        data_dir, pairs = regenerate(seed, common)
        for name, settings in plan:
            epoch = steps_per_epoch(settings, data_dir, pairs, base.learner.global_batch_size)
            run_dir = offline_run(f"s{seed}-{name}", overrides(settings, epoch), common, out, data_dir, args.resume)
            figures[name][seed] = run_figures(run_dir)
    now = provenance()
    text = table(args.group, figures, args.seeds, f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}.")
    (results / f"{args.group}.md").write_text(text + "\n")
    written = plots(args.group, figures, args.seeds, results)
    print(text)
    print("written:", results / f"{args.group}.md", *written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
