"""Offline runs that share one seed's regenerated data, for the benchmark drivers.

Per seed one run (`s<seed>-data`) evaluates the warm start and generates and verifies round 1;
every other offline run of that seed copies those stages (with their ledger entries, so each run
is charged for the data it trains on) and differs only from the build stage on.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fpa_ray.config import load_config
from fpa_ray.pipelines.offline import OfflinePipeline
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline

SHARED = ("eval_0", "round_1/samples", "round_1/verified")  # what every offline run of a seed reuses
SHARED_STAGES = {"generate", "verify", "eval_generate", "eval_verify"}


def log(message: str) -> None:
    print(message, flush=True)


def regenerate(seed: int, common: list[str]) -> tuple[Path, int]:
    """The seed's data: evaluate the start, generate and verify round 1, build its pairs (to size epochs)."""
    pipeline = OfflinePipeline(load_config("tiny-cpu", [*common, f"name=s{seed}-data"]), log=log)
    pipeline.prepare()
    policy = pipeline.initial_policy()
    pipeline.evaluate(0, policy)
    dataset = pipeline.build(1, pipeline.verify(1, pipeline.generate(1, policy)))
    return pipeline.run_dir, json.loads((dataset / "manifest.json").read_text())["rows"]


def fresh_or_resumed(run_dir: Path, resume: bool) -> bool:
    """Whether `run_dir` holds a finished run to reuse; without `resume` it must not exist at all (a rerun
    measures afresh: reusing what an earlier invocation left is asked for, never implied)."""
    if run_dir.exists() and not resume:
        raise SystemExit(f"{run_dir} exists from an earlier invocation: pass --resume to go on from it (its finished cells "
                         "reused), or --out another directory to measure afresh")
    return (run_dir / "curve.json").exists()


def offline_run(name: str, overrides: list[str], common: list[str], out: Path, source: Path, resume: bool = False) -> Path:
    """Run `name` on a copy of `source`'s shared stages (with `resume`, reuse it when finished, go on when not); returns its run dir."""
    config = load_config("tiny-cpu", [*common, f"name={name}", *overrides])
    run_dir = out / config.name
    if fresh_or_resumed(run_dir, resume):  # finished: reused as it is, whichever code version made it
        log(f"== {config.name}: finished earlier, reused")
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for part in SHARED:
        if not (run_dir / part).exists():
            shutil.copytree(source / part, run_dir / part)
    if not (run_dir / "ledger.jsonl").exists():
        entries = [line for line in (source / "ledger.jsonl").read_text().splitlines() if json.loads(line)["stage"] in SHARED_STAGES]
        (run_dir / "ledger.jsonl").write_text("".join(line + "\n" for line in entries))
    start = time.time()
    OfflinePipeline(config, log=log).run()
    log(f"== {config.name}: {time.time() - start:.0f} s")
    return run_dir


def grpo_run(name: str, overrides: list[str], common: list[str], out: Path, resume: bool = False) -> Path:
    """GRPO run `name`: configs/tiny-cpu-grpo.yaml with `common`, then `overrides` (with `resume`, reused when
    finished); it evaluates its own start. Returns its run dir."""
    config = load_config("tiny-cpu-grpo", [*common, f"name={name}", *overrides])
    run_dir = out / config.name
    if fresh_or_resumed(run_dir, resume):
        log(f"== {config.name}: finished earlier, reused")
        return run_dir
    start = time.time()
    OnlineGRPOPipeline(config, log=log).run()
    log(f"== {config.name}: {time.time() - start:.0f} s")
    return run_dir


def curve(run_dir: Path) -> dict:
    return json.loads((run_dir / "curve.json").read_text())


def plot_accuracy_curves(points: dict[str, dict[int, list[dict]]], seeds: list[int], ylabel: str, title: str, path: Path,
                         key: str = "cpu_hours", target: float | None = None) -> None:
    """pass@1 against a cumulative training cost (`key`: cpu_hours, node_hours): one colour per method,
    one line per seed; `target`: a horizontal line at that pass@1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for index, (method, by_seed) in enumerate(points.items()):
        for n, s in enumerate(seeds):
            axes.plot([p[key] for p in by_seed[s]], [100 * p["pass_at_1"] for p in by_seed[s]], marker="o", markersize=3,
                      color=f"C{index}", alpha=0.8, label=method if n == 0 else None)
    if target is not None:
        axes.axhline(100 * target, color="grey", linestyle=":", linewidth=1, label=f"target {100 * target:.1f}%")
    axes.set_xlabel("cumulative training " + key.replace("_hours", "-hours").replace("cpu", "CPU"))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
