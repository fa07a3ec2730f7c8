"""Accuracy against cost across finished runs: a Markdown table and a PNG plot, and the statistics
of "how much of one method's cost does the other need to reach the same accuracy".

Each run directory holds `curve.json` (written by the offline and the online pipeline alike): its
evaluated policies in training order, each with pass@1 and the training cost charged before it:
node-hours (every host of the cluster the job held x wall time, fpa_ray.accounting), the basis
runs are compared on, and the GPU-hours (CPU-hours on a CPU machine) its stages used, beside it.

The cost of reaching an accuracy is interpolated linearly between the last evaluated policy below
it and the first at or above it: taking the first evaluated policy instead caps a method's figure
at its first evaluation's cost, so a method evaluated more often looks cheaper (two methods that
never move, evaluated at 0.03 and 0.10 node-hours, would give a "ratio" near 0.3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COST_KEY = "node_hours"


class CompareError(ValueError):
    """A run directory that cannot be compared; the message names it."""


def load_curve(run_dir: Path) -> dict:
    path = run_dir / "curve.json"
    if not path.is_file():
        raise CompareError(f"{run_dir} has no curve.json: is it a finished fpa_ray run directory?")
    curve = json.loads(path.read_text())
    if not curve.get("points"):
        raise CompareError(f"{path} holds no evaluated policies")
    return curve


def cost_to_reach(points: list[dict], target: float, key: str = COST_KEY) -> float | None:
    """The cost at which the curve first reaches `target`, linear between the last evaluated policy
    below it and the first at or above it; the first point's cost when it is there already; None: never."""
    below = None
    for point in points:
        if point["pass_at_1"] >= target:
            if below is None:
                return point[key]
            cost, accuracy = below
            return cost + (point[key] - cost) * (target - accuracy) / (point["pass_at_1"] - accuracy)
        below = (point[key], point["pass_at_1"])
    return None


@dataclass
class SeedCurves:
    """One seed's methods, evaluated on the same test problems. Per method: the training cost of each
    evaluated policy (the shared start first, at 0), their per-problem test pass@1 (policies x
    problems, the problems in one order for every method) and its plateau (a policy's index, chosen
    on a dev split, never on these scores)."""

    costs: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    plateaus: dict[str, int]


def plateau_gain(scores: np.ndarray, plateau: int) -> tuple[float, float]:
    """The plateau's paired per-problem difference from the start, and its standard error over problems."""
    diffs = scores[plateau] - scores[0]
    return float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(len(diffs)))


def lower_plateau(seed: SeedCurves, methods: tuple[str, str], problems: np.ndarray | None = None) -> tuple[str, float, dict[str, float | None]]:
    """Which of the two methods has the lower plateau on test, that plateau's pass@1 (the target), and each
    method's cost to reach it (cost_to_reach, linear between evaluations); `problems`: indices to score on."""
    scores = {m: seed.scores[m] if problems is None else seed.scores[m][:, problems] for m in methods}
    accuracy = {m: scores[m].mean(axis=1) for m in methods}
    lower = min(methods, key=lambda m: accuracy[m][seed.plateaus[m]])
    target = float(accuracy[lower][seed.plateaus[lower]])
    reach = {m: cost_to_reach([{"pass_at_1": a, COST_KEY: c} for a, c in zip(accuracy[m], seed.costs[m])], target) for m in methods}
    return lower, target, reach


def seed_ratio(seed: SeedCurves, numerator: str, denominator: str, problems: np.ndarray | None = None,
               min_se: float | None = 2.0) -> float | None:
    """numerator's cost / denominator's cost to reach the lower of their two plateaus on test (lower_plateau).
    None where there is nothing to compare: the lower plateau is less than `min_se` paired standard
    errors above the start (flat curves have no plateau to reach), or the denominator is there at no cost."""
    lower, _, reach = lower_plateau(seed, (numerator, denominator), problems)
    if min_se is not None:
        scores = seed.scores[lower] if problems is None else seed.scores[lower][:, problems]
        gain, se = plateau_gain(scores, seed.plateaus[lower])
        if not gain >= min_se * se or gain <= 0:
            return None
    if not reach[denominator]:
        return None
    return reach[numerator] / reach[denominator]


def ratio_with_interval(seeds: list[SeedCurves], numerator: str, denominator: str, draws: int = 2000, level: float = 0.95,
                        rng_seed: int = 0) -> dict:
    """The mean over seeds of seed_ratio, and a bootstrap interval over seeds and problems: each draw
    resamples the seeds, and within each the test problems (the same problems for both methods and every
    policy: the comparison stays paired), and takes the mean of the defined ratios. Plateaus are not
    re-chosen (they were chosen on dev) nor re-gated (a draw's plateau is the policy chosen, whatever its
    resampled score). Seeds without a ratio are counted, not averaged."""
    ratios = [seed_ratio(seed, numerator, denominator) for seed in seeds]
    defined = [r for r in ratios if r is not None]
    result = {"ratio": float(np.mean(defined)) if defined else None, "per_seed": ratios, "low": None, "high": None, "draws": 0}
    if not defined:
        return result
    rng = np.random.default_rng(rng_seed)
    usable = [seed for seed, r in zip(seeds, ratios) if r is not None]
    means = []
    for _ in range(draws):
        values = []
        for index in rng.integers(len(usable), size=len(usable)):
            seed = usable[index]
            count = seed.scores[numerator].shape[1]
            value = seed_ratio(seed, numerator, denominator, rng.integers(count, size=count), min_se=None)
            if value is not None:
                values.append(value)
        if values:
            means.append(np.mean(values))
    tail = (1 - level) / 2
    result.update(low=float(np.quantile(means, tail)), high=float(np.quantile(means, 1 - tail)), draws=len(means))
    return result


def evaluations_since_best(values: list[float]) -> int:
    """How many evaluations came after the first best of `values`: 0 while the last one is the best.
    A run has plateaued once this reaches its patience (a tie is no improvement)."""
    return len(values) - 1 - values.index(max(values))


def summarise(curves: list[dict], target: float | None = None) -> tuple[list[dict], float, str]:
    """Per-run rows: final and best pass@1, training node-hours and the resources used, node-hours to
    reach the target; and the unit of the resources used (GPU-hours when any run used GPUs).

    "Best" is over the trained policies (the start is the same for every run and says nothing of
    the method); the default target is the first run's best (pass the baseline first).
    """
    for curve in curves:
        if any(COST_KEY not in p for p in curve["points"]):
            raise CompareError(f"{curve['name']}: its curve.json has no node-hours (an older fpa_ray wrote it): rerun it to compare")
    used = "GPU-hours" if any(p["gpu_hours"] for c in curves for p in c["points"]) else "CPU-hours"
    used_key = "gpu_hours" if used == "GPU-hours" else "cpu_hours"
    if target is None:
        target = _best(curves[0]["points"])
    rows = []
    for curve in curves:
        points = curve["points"]
        rows.append({
            "run": curve["name"], "description": curve["description"], "start": points[0]["pass_at_1"],
            "final": points[-1]["pass_at_1"], "best": _best(points), "hours": points[-1][COST_KEY], "used": points[-1][used_key],
            "hours_to_target": cost_to_reach(points, target),
        })
    return rows, target, used


def _best(points: list[dict]) -> float:
    return max(p["pass_at_1"] for p in (points[1:] or points))


def compare(run_dirs: list[Path], output_dir: Path, target: float | None = None) -> Path:
    """Write compare.md and compare.png into `output_dir`; returns compare.md."""
    if not run_dirs:
        raise CompareError("name at least one run directory")
    curves = [load_curve(Path(d)) for d in run_dirs]
    rows, target, used = summarise(curves, target)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# accuracy against training node-hours", "",
             f"| run | start pass@1 | final pass@1 | best pass@1 | training node-hours | node-hours to reach {target:.1%} | training {used} used |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        reach = "not reached" if row["hours_to_target"] is None else f"{row['hours_to_target']:.4f}"
        lines.append(f"| {row['run']} | {row['start']:.1%} | {row['final']:.1%} | {row['best']:.1%} | {row['hours']:.4f} | {reach} | {row['used']:.4f} |")
    lines += ["", *(f"- {row['run']}: {row['description']}" for row in rows), "",
              "node-hours: the hosts of the cluster each job held x wall time of its training stages (idle devices included); "
              f"to reach the target: linear between the last evaluation below it and the first at or above it; {used} used: "
              "what the training stages themselves held.", "", "![accuracy against node-hours](compare.png)", ""]
    plot_curves(curves, target, output_dir / "compare.png")
    path = output_dir / "compare.md"
    path.write_text("\n".join(lines))
    return path


def plot_curves(curves: list[dict], target: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        points = curve["points"]
        axes.plot([p[COST_KEY] for p in points], [100 * p["pass_at_1"] for p in points], marker="o", label=curve["name"])
    if target is not None:
        axes.axhline(100 * target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.1%}")
    axes.set_xlabel("cumulative training node-hours")
    axes.set_ylabel("pass@1 (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
