"""A run's accuracy against what its training cost: report.md, curve.json and per_problem.json, and
the curve and the ledger to the run's trackers. Both pipelines write theirs with this."""

from __future__ import annotations

import json
from pathlib import Path

from fpa_ray.accounting import NOT_TRAINING, Ledger
from fpa_ray.evaluation.scoring import paired_difference, total_gain_loss
from fpa_ray.run_directory import RunDirectory
from fpa_ray.run_files import write_json


def cost_point(ledger: Ledger, label: str, result: dict, time_s: float) -> dict:
    """One point of the accuracy curve: a score and the training resources charged before `time_s`."""
    cost = ledger.cost_until(time_s, excluded=NOT_TRAINING)
    point = {"point": label, "pass_at_1": result["pass_at_1"], "pass_at_k": result["pass_at_k"], "maj_at_k": result.get("maj_at_k"),
             "per_problem": result["per_problem"],
             "node_hours": cost["node_seconds"] / 3600, "cpu_hours": cost["cpu_seconds"] / 3600, "gpu_hours": cost["gpu_seconds"] / 3600}
    if "benchmarks" in result:
        point["benchmarks"] = {name: {key: b[key] for key in ("pass_at_1", "pass_at_k", "per_problem")} for name, b in result["benchmarks"].items()}
    return point


def curve_point(point: dict, start: dict) -> dict:
    """A point of curve.json: its scores and hours without the per-problem maps; per benchmark also
    the paired difference from the start and its standard error (what a comparison across runs needs)."""
    result = {k: v for k, v in point.items() if k not in ("per_problem", "benchmarks")}
    if "benchmarks" in point:
        result["benchmarks"] = {}
        for label, bench in point["benchmarks"].items():
            paired = paired_difference(start["benchmarks"][label]["per_problem"], bench["per_problem"])
            result["benchmarks"][label] = {"pass_at_1": bench["pass_at_1"], "pass_at_k": bench["pass_at_k"],
                                           "vs_start": paired["difference"], "vs_start_se": paired["se"], "problems": paired["problems"]}
    return result


def _versus(before: dict, after: dict, index: int) -> str:
    if index == 0:
        return "-"
    paired = paired_difference(before, after)
    return f"{paired['difference'] * 100:+.1f} ({paired['se'] * 100:.1f}) pts"


def write_run_report(run: RunDirectory, description: str, points: list[dict]) -> Path:
    """report.md (accuracy against training resources, data sizes, ledger), curve.json and per_problem.json; returns
    report.md's path. The first point is the start, which every other is compared with."""
    config, ledger = run.config, run.ledger
    threshold = config.evaluation.solved_threshold
    unit = "GPU-hours" if any(p["gpu_hours"] for p in points) else "CPU-hours"
    lines = [f"# {config.name}", "", description, "",
             f"| policy | pass@1 | vs start (SE) | maj@k | pass@k | Total Gain | Total Loss | training node-hours | training {unit} used |",
             "|---|---|---|---|---|---|---|---|---|"]
    for index, point in enumerate(points):
        change = total_gain_loss(points[0]["per_problem"], point["per_problem"], threshold)
        gain, loss = ("-", "-") if index == 0 else (change["total_gain"], change["total_loss"])
        hours = point["gpu_hours"] if unit == "GPU-hours" else point["cpu_hours"]
        majority = "-" if point["maj_at_k"] is None else f"{point['maj_at_k']:.1%}"
        lines.append(f"| {point['point']} | {point['pass_at_1']:.1%} | {_versus(points[0]['per_problem'], point['per_problem'], index)} "
                     f"| {majority} | {point['pass_at_k']:.1%} | {gain} | {loss} | {point['node_hours']:.4f} | {hours:.4f} |")
    if "benchmarks" in points[0]:
        lines += ["", "| policy | " + " | ".join(f"{label} pass@1 | vs start (SE)" for label in points[0]["benchmarks"]) + " |",
                  "|---|" + "---|---|" * len(points[0]["benchmarks"])]
        for index, point in enumerate(points):
            cells = []
            for label, bench in point["benchmarks"].items():
                cells += [f"{bench['pass_at_1']:.1%}", _versus(points[0]["benchmarks"][label]["per_problem"], bench["per_problem"], index)]
            lines.append(f"| {point['point']} | " + " | ".join(cells) + " |")
    evaluation = config.evaluation
    lines += ["", f"pass@1: mean over the eval problems of the share of {evaluation.samples} samples at T={evaluation.temperature} "
              f"that are correct; vs start: the mean per-problem change of pass@1 on the same problems, with its standard error over problems "
              f"(a change under 2 SE is not resolved by this evaluation); maj@k: the most frequent answer of the {evaluation.samples} is right; "
              f"Total Gain/Loss against the start: problems crossing pass@1 >= {threshold}. Training "
              f"node-hours: the cluster's hosts (machines) x wall time of every stage but {', '.join(sorted(NOT_TRAINING))}, up to that "
              f"policy: what the job held, used or idle; training {unit} used: what those stages held of it.", ""]
    for round_index in range(1, config.rounds + 1):
        manifest = run.path / f"round_{round_index}" / "dataset" / "manifest.json"
        if manifest.exists():
            data = json.loads(manifest.read_text())
            lines.append(f"round {round_index} data: {data['rows']} {data['kind']} rows; {data['counts']}")
    totals = ledger.totals()
    lines += ["", "| stage | wall s | node-hours | CPU-hours | GPU-hours |", "|---|---|---|---|---|"]
    for stage, total in totals.items():
        lines.append(f"| {stage} | {total['wall_s']:.1f} | {total['node_seconds'] / 3600:.4f} | {total['cpu_seconds'] / 3600:.4f} "
                     f"| {total['gpu_seconds'] / 3600:.4f} |")
    write_json(run.path / "curve.json", {"name": config.name, "description": description, "unit": "node-hours", "used": unit,
                                         "points": [curve_point(p, points[0]) for p in points]})
    # Each point's per-problem pass@1 (overall and per benchmark): what a paired or bootstrap comparison across runs reads.
    write_json(run.path / "per_problem.json", {"points": [
        {"point": p["point"], "per_problem": p["per_problem"], "benchmarks": {k: b["per_problem"] for k, b in p.get("benchmarks", {}).items()}}
        for p in points]})
    with run.tracking.open("eval/", run.path / "tensorboard") as trackers:  # the curve: one step per evaluated policy
        for index, point in enumerate(points):
            trackers.log({"pass_at_1": point["pass_at_1"], "pass_at_k": point["pass_at_k"], "node_hours": point["node_hours"],
                          "cpu_hours": point["cpu_hours"], "gpu_hours": point["gpu_hours"],
                          **{f"{label}/pass_at_1": b["pass_at_1"] for label, b in point.get("benchmarks", {}).items()}}, index)
    with run.tracking.open("cost/") as trackers:
        trackers.log({f"{stage}/{key.replace('_seconds', '_hours')}": value / 3600 if key != "wall_s" else value
                      for stage, total in totals.items() for key, value in total.items()}, 0)
    path = run.path / "report.md"
    path.write_text("\n".join(lines) + "\n")
    run.log("\n".join(lines))
    return path
