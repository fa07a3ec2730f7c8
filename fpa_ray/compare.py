"""Accuracy against resource-hours across finished runs: a Markdown table and a PNG plot.

Each run directory holds `curve.json` (written by the offline and the online pipeline alike): its
evaluated policies in training order, each with pass@1 and the training resource-hours charged
before it. GPU-hours are compared when any run used GPUs, CPU-core-hours otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path


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


def hours_to_reach(points: list[dict], target: float, key: str) -> float | None:
    """Resource-hours of the first policy whose pass@1 reaches `target` (None: never)."""
    return next((p[key] for p in points if p["pass_at_1"] >= target), None)


def evaluations_since_best(values: list[float]) -> int:
    """How many evaluations came after the first best of `values`: 0 while the last one is the best.
    A run has plateaued once this reaches its patience (a tie is no improvement)."""
    return len(values) - 1 - values.index(max(values))


def summarise(curves: list[dict], target: float | None = None) -> tuple[list[dict], float, str]:
    """Per-run rows: final and best pass@1, total training hours, hours to reach the target.

    "Best" is over the trained policies (the start is the same for every run and says nothing of
    the method); the default target is the first run's best (pass the baseline first).
    """
    unit = "GPU-hours" if any(c["unit"] == "GPU-hours" for c in curves) else "CPU-hours"
    key = "gpu_hours" if unit == "GPU-hours" else "cpu_hours"
    if target is None:
        target = _best(curves[0]["points"])
    rows = []
    for curve in curves:
        points = curve["points"]
        rows.append({
            "run": curve["name"], "description": curve["description"], "start": points[0]["pass_at_1"],
            "final": points[-1]["pass_at_1"], "best": _best(points),
            "hours": points[-1][key], "hours_to_target": hours_to_reach(points, target, key),
        })
    return rows, target, unit


def _best(points: list[dict]) -> float:
    return max(p["pass_at_1"] for p in (points[1:] or points))


def compare(run_dirs: list[Path], output_dir: Path, target: float | None = None) -> Path:
    """Write compare.md and compare.png into `output_dir`; returns compare.md."""
    if not run_dirs:
        raise CompareError("name at least one run directory")
    curves = [load_curve(Path(d)) for d in run_dirs]
    rows, target, unit = summarise(curves, target)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# accuracy against training {unit}", "",
             f"| run | start pass@1 | final pass@1 | best pass@1 | training {unit} | {unit} to reach {target:.1%} |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        reach = "not reached" if row["hours_to_target"] is None else f"{row['hours_to_target']:.4f}"
        lines.append(f"| {row['run']} | {row['start']:.1%} | {row['final']:.1%} | {row['best']:.1%} | {row['hours']:.4f} | {reach} |")
    lines += ["", *(f"- {row['run']}: {row['description']}" for row in rows), "", "![accuracy against resource-hours](compare.png)", ""]
    plot_curves(curves, unit, target, output_dir / "compare.png")
    path = output_dir / "compare.md"
    path.write_text("\n".join(lines))
    return path


def plot_curves(curves: list[dict], unit: str, target: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    key = "gpu_hours" if unit == "GPU-hours" else "cpu_hours"
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        points = curve["points"]
        axes.plot([p[key] for p in points], [100 * p["pass_at_1"] for p in points], marker="o", label=curve["name"])
    if target is not None:
        axes.axhline(100 * target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.1%}")
    axes.set_xlabel(f"cumulative training {unit}")
    axes.set_ylabel("pass@1 (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
