"""GRPO step time by weight transfer and by rollout engine, on the tiny default, in one run.

    python benchmarks/performance/grpo_step.py [--steps 6] [--out benchmarks/results/grpo_step]

Cells, each a short `tiny-cpu-grpo` training run (no evaluation) on one local Ray cluster, from
the same warm start: vLLM-CPU with `grpo.weight_sync` = collective (the default: a gloo broadcast
into the live engine), object_store and disk (a checkpoint written and reloaded in place), and the
transformers engine with the default sync. Besides, `restart`: the seconds a fresh sampler actor
takes to be ready, what the loop paid per step before weights moved in place (an engine restart).
Per cell, from its ledger and rollout files, steps 2.. (step 1 holds the start-up): sync seconds
per step, GRPO step seconds (generate + verify + train + sync), sync share of the step, rollout
tokens/s (response tokens / generate seconds). Each cell's result is written when it finishes and
reused on a rerun. Time it with nothing else running on the machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq

from fpa_ray.cluster import init_ray
from fpa_ray.config import load_config
from fpa_ray.demo import format_table
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline

CELLS = {
    "vllm-collective": ["sampler.engine=vllm", "grpo.weight_sync=collective"],
    "vllm-object_store": ["sampler.engine=vllm", "grpo.weight_sync=object_store"],
    "vllm-disk": ["sampler.engine=vllm", "grpo.weight_sync=disk"],
    "hf-collective": ["sampler.engine=hf", "grpo.weight_sync=collective"],
}
PHASES = ("grpo_generate", "grpo_verify", "grpo_train", "grpo_sync")


def measure(run_dir: Path, steps: int) -> dict:
    """Per-step figures of a finished cell, steps 2..steps (rollout rounds 1..steps-1)."""
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines() if line]
    rows = []
    for step in range(1, steps):
        # Round r holds rollout r's generate, verify and train and the sync that follows rollout r - 1.
        seconds = {phase: sum(e["end"] - e["start"] for e in ledger if e["stage"] == phase and e["round"] == step) for phase in PHASES}
        table = pq.read_table(run_dir / "online" / "rollouts" / f"step-{step:05d}.parquet", columns=["response_token_ids"])
        tokens = sum(len(t) for t in table.column("response_token_ids").to_pylist())
        rows.append({**seconds, "step_s": sum(seconds.values()), "tokens": tokens})
    sync = statistics.mean(r["grpo_sync"] for r in rows)
    step = statistics.mean(r["step_s"] for r in rows)
    return {
        "sync_s": sync, "sync_s_max": max(r["grpo_sync"] for r in rows), "step_s": step, "sync_share": sync / step,
        "generate_s": statistics.mean(r["grpo_generate"] for r in rows),
        "rollout_tokens_per_s": sum(r["tokens"] for r in rows) / sum(r["grpo_generate"] for r in rows), "steps": len(rows),
    }


def restart_seconds(config, policy: Path) -> float:
    """A fresh sampler actor on the policy, until its engine answers: the old per-step restart."""
    import ray

    from fpa_ray.sampler.rollout import start_rollout_workers

    start = time.perf_counter()
    [worker] = start_rollout_workers(policy, config.sampler.model_copy(update={"engine": "vllm", "num_actors": 1}), config.data.template, "restart")
    ray.get(worker.engine_identity.remote())
    seconds = time.perf_counter() - start
    ray.kill(worker)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_step"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    init_ray()
    common = [f"output_dir={args.out / 'runs'}", f"grpo.steps={args.steps}", f"grpo.eval_every={args.steps}"]
    results = {}
    for cell, overrides in CELLS.items():
        path = args.out / f"{cell}.json"
        if not path.exists():
            pipeline = OnlineGRPOPipeline(load_config("tiny-cpu-grpo", [*common, f"name={cell}", *overrides]), log=print)
            pipeline.prepare()
            pipeline.train_online(pipeline.initial_policy())
            path.write_text(json.dumps(measure(pipeline.run_dir, args.steps), indent=1))
        results[cell] = json.loads(path.read_text())
    path = args.out / "restart.json"
    if not path.exists():
        pipeline = OnlineGRPOPipeline(load_config("tiny-cpu-grpo", [*common, "name=restart"]), log=print)
        pipeline.prepare()
        path.write_text(json.dumps({"restart_s": restart_seconds(pipeline.config, pipeline.initial_policy())}))
    restart = json.loads(path.read_text())["restart_s"]

    base = results["vllm-collective"]
    rows = [{"cell": cell, **{k: r[k] for k in ("sync_s", "sync_s_max", "step_s", "sync_share", "generate_s", "rollout_tokens_per_s")},
             "step_vs_collective": r["step_s"] / base["step_s"]} for cell, r in results.items()]
    restarted = base["step_s"] - base["sync_s"] + restart
    rows.append({"cell": "vllm-restart (engine restarted per step)", "sync_s": restart, "sync_s_max": restart, "step_s": restarted,
                 "sync_share": restart / restarted, "generate_s": base["generate_s"], "rollout_tokens_per_s": base["rollout_tokens_per_s"],
                 "step_vs_collective": restarted / base["step_s"]})
    table = format_table(rows)
    vllm_vs_hf = base["rollout_tokens_per_s"] / results["hf-collective"]["rollout_tokens_per_s"]
    text = (f"{table}\n\nrollout tokens/s, vLLM-CPU vs transformers: {vllm_vs_hf:.2f}x; steps 2..{args.steps} of each cell; "
            f"sync <= 5% of a step: {'holds' if base['sync_share'] <= 0.05 else 'does not hold'} ({base['sync_share']:.1%})")
    (args.out / "grpo_step.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
