"""The three GRPO layouts side by side on the tiny default, in one run: what each costs per step and where it idles.

    python benchmarks/performance/grpo_layouts.py [--steps 12] [--out benchmarks/results/grpo_layouts] [--set KEY=VALUE ...]

Cells, each a `tiny-cpu-grpo` run from the same warm start on one local Ray cluster, holding the
same 4 logical CPUs: `split` (1 sampler + 1 verifier + 2 learner CPUs, as shipped), `split-async`
(the same pools, one step off), `colocated` (an engine in each of the 2 learner workers' bundles of
1 + 0.5 CPUs, + the verifier). Per cell: seconds per step (between the ends of the first and the
last weight sync: steps 2..N), resource-seconds per step (CPUs held x those seconds), each pool's
busy share (online/busy.json), and pass@1 of the start and of the policy after N steps (the run's
own evaluation: 500 test problems x 8 samples). Each cell's result is written when it finishes and
reused on a rerun; the summary names the command, commit, date and machine. `--set` applies the same
overrides to every cell (e.g. the headline's GRPO testbed settings, to choose its layout at its scale).

What the figures mean here: 4 logical CPUs on 2 physical cores, so work that overlaps in time
(split-async's sampling during training, the three pools of split) competes for the same 2 cores;
the gains overlap brings on GPUs, where each pool has its own devices, cannot show. They do show
what each layout holds, how long each pool waits, and that the layouts train the same policy
(split and colocated sample the same seeded rollouts from the same weights). Time it with nothing
else running on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import sys
from datetime import datetime, UTC
from pathlib import Path

from fpa_ray.cluster import init_ray
from fpa_ray.config import load_config
from fpa_ray.demo import format_table
from fpa_ray.grpo_layouts import grpo_layout
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline

CELLS = {
    "split": [],
    "split-async": ["grpo.layout=split-async"],
    "colocated": ["grpo.layout=colocated", "grpo.weight_sync=same_device", "sampler.num_actors=2", "sampler.cpus_per_actor=0.5"],
}


def measure(pipeline: OnlineGRPOPipeline, steps: int) -> dict:
    run = pipeline.run_dir
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines() if line]
    syncs = [e["end"] for e in ledger if e["stage"] == "grpo_sync"]
    step_s = (syncs[-1] - syncs[0]) / (len(syncs) - 1)
    held = grpo_layout(pipeline.config.grpo).held_resources(pipeline.config)
    busy = json.loads((run / "online" / "busy.json").read_text())
    curve = json.loads((run / "curve.json").read_text())
    points = curve["points"]
    return {
        "step_s": step_s, "cpus_held": held["cpus"], "cpu_seconds_per_step": step_s * held["cpus"], "steps": len(syncs),
        **{f"{pool}_busy": busy[pool]["busy_share"] for pool in ("sampler", "verifier", "learner")},
        "pass1_start": points[0]["pass_at_1"], "pass1_end": points[-1]["pass_at_1"],
        "staleness_max": max(json.loads(line).get("staleness", 0.0) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_layouts"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every cell")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    init_ray()
    common = [f"output_dir={args.out / 'runs'}", *args.set, f"grpo.steps={args.steps}", f"grpo.eval_every={args.steps}"]
    results = {}
    for cell, overrides in CELLS.items():
        path = args.out / f"{cell}.json"
        if not path.exists():
            pipeline = OnlineGRPOPipeline(load_config("tiny-cpu-grpo", [*common, f"name={cell}", *overrides]), log=print)
            pipeline.run()
            path.write_text(json.dumps(measure(pipeline, args.steps), indent=1))
        results[cell] = json.loads(path.read_text())
    base = results["split"]
    rows = [{"layout": cell, **r, "step_vs_split": r["step_s"] / base["step_s"],
             "cpu_seconds_vs_split": r["cpu_seconds_per_step"] / base["cpu_seconds_per_step"]} for cell, r in results.items()]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    provenance = {"command": "python " + " ".join(sys.argv), "commit": commit, "date": datetime.now(UTC).isoformat(),
                  "machine": f"{platform.node()} {platform.machine()}, {mp.cpu_count()} cores, no GPU"}
    (args.out / "summary.json").write_text(json.dumps({**provenance, "cells": rows}, indent=1))
    text = "\n".join(f"{key}: {value}" for key, value in provenance.items()) + "\n\n" + format_table(rows)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
