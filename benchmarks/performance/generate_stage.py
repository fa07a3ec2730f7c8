"""The generate stage against its bare engine: tokens/s of samples written by the stage (Ray Data
actor pool, per-sample seeds, one shard per block, Parquet writes, manifest) vs the same engine's
own `generate` on the same prompts and requests, in one run; and where the stage's time goes.

    python benchmarks/performance/generate_stage.py [--prompts 256 1024 --n 8 --shard-size 64]

For each prompt count, one after the other on the same machine:
1. the engine alone, cold: a new Python process that starts the engine (imports included) and
   generates every request in one call, timed from its spawn: what running the engine by hand costs;
   then, warm, the same requests in a call per shard (the stage's cut, no start, no warm-up);
2. the stage: GenerateStage.run on a local Ray cluster already up (as in a pipeline), one sampler
   actor holding both cores (cpus_per_actor=2: Ray gives an actor as many OpenMP threads as it
   holds CPUs, and the engine alone uses both); its manifest's `timing` splits the wall time into
   the wait for the actor (Ray Data, a worker process), the actor's start (imports, engine), each
   shard's engine call and the rest of the shard (prompts, table, Parquet write, hash).
Ratios: the stage's wall against the cold engine (both pay a start), and the stage's shards after
the first (done to done) against the warm engine's calls per shard (neither pays one).
The model is the embedded default's warm-started tiny policy (cached after the first build).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from fpa_ray.config import RunConfig, SamplerConfig  # noqa: E402
from fpa_ray.data.sources import PromptRow  # noqa: E402
from fpa_ray.data.synthetic import generate  # noqa: E402
from fpa_ray.data.templates import get_template  # noqa: E402
from fpa_ray.demo import format_table  # noqa: E402
from fpa_ray.sampler.engines import SampleRequest, sample_seed  # noqa: E402
from fpa_ray.warmstart import warm_start  # noqa: E402


def bare_engine(job: Path) -> None:
    """In the child process: start the engine, generate everything cold, then warm per shard."""
    spec = json.loads(job.read_text())
    spawned = spec["spawned"]
    from fpa_ray.sampler.engines import VLLMEngine

    engine = VLLMEngine(Path(spec["checkpoint"]), SamplerConfig(**spec["config"]))
    started = time.time() - spawned
    requests = [SampleRequest(ids, seed) for ids, seed in spec["requests"]]
    stop = tuple(spec["stop"])
    outputs = engine.generate(requests, stop=stop)
    cold = time.time() - spawned
    begun = time.perf_counter()
    per_shard = spec["per_shard"]
    shard_tokens = sum(len(c.token_ids) for s in range(0, len(requests), per_shard) for c in engine.generate(requests[s : s + per_shard], stop=stop))
    warm = time.perf_counter() - begun
    print(json.dumps({"start_s": started, "cold_s": cold, "tokens": sum(len(c.token_ids) for c in outputs), "warm_shards_s": warm,
                      "warm_tokens": shard_tokens}))


def measure(prompts: int, args, checkpoint: Path, defaults: RunConfig) -> tuple[list[dict], dict]:
    from transformers import AutoTokenizer

    from fpa_ray.sampler.stage import GenerateStage, read_samples

    problems = [PromptRow(p.id, p.prompt, p.answer, "synthetic") for p in generate(defaults.data.synthetic, "test", prompts)]
    config = SamplerConfig(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, dtype="float32", shard_size=args.shard_size,
                           cpus_per_actor=args.cpus_per_actor)
    template = get_template(defaults.data.template)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)  # the tokenizer vLLM loads from the same files
    ids = [tokenizer(template.render(p.prompt, tokenizer), add_special_tokens=False)["input_ids"] for p in problems]
    requests = [(ids[k], sample_seed(args.seed, p.id, i)) for k, p in enumerate(problems) for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"checkpoint": str(checkpoint), "config": config.model_dump(), "requests": requests,
                                   "stop": list(template.stop), "per_shard": args.shard_size * args.n, "spawned": time.time()}))
        child = subprocess.run([sys.executable, __file__, "--bare", str(job)], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(f"the bare engine failed:\n{child.stderr[-3000:]}")
        bare = json.loads(child.stdout.strip().splitlines()[-1])

        stage = GenerateStage(config, defaults.data.template, args.seed)
        start = time.perf_counter()
        manifest = stage.run(problems, checkpoint, Path(tmp) / "samples")
        wall = time.perf_counter() - start
        written = sum(len(t) for t in read_samples(Path(tmp) / "samples").to_pandas()["response_token_ids"])
    assert manifest["complete"] and manifest["rows"] == len(requests)
    timing = manifest["timing"]
    shards = [timing["shards"][k] for k in sorted(timing["shards"], key=int)]
    first, rest = shards[0], shards[1:]
    steady_s = rest[-1]["done_s"] - first["done_s"] if rest else float("nan")
    steady_tokens = sum(s["tokens"] for s in rest)
    rows = [
        {"what": "engine alone, cold (new process, start + one call)", "seconds": bare["cold_s"], "tokens": bare["tokens"],
         "tokens_per_s": bare["tokens"] / bare["cold_s"]},
        {"what": "stage, wall (actor start included)", "seconds": wall, "tokens": written, "tokens_per_s": written / wall},
        {"what": "engine alone, warm, a call per shard", "seconds": bare["warm_shards_s"], "tokens": bare["warm_tokens"],
         "tokens_per_s": bare["warm_tokens"] / bare["warm_shards_s"]},
        {"what": "stage, shards after the first (done to done)", "seconds": steady_s, "tokens": steady_tokens,
         "tokens_per_s": steady_tokens / steady_s},
        {"what": "stage, the engine calls of those shards", "seconds": sum(s["engine_s"] for s in rest), "tokens": steady_tokens,
         "tokens_per_s": steady_tokens / sum(s["engine_s"] for s in rest) if rest else float("nan")},
    ]
    for row, base in zip(rows, (0, 0, 2, 2, 2)):
        row["vs_engine"] = row["tokens_per_s"] / rows[base]["tokens_per_s"]
    (actor,) = timing["actors"]
    breakdown = {
        "prompts": prompts, "samples": len(requests), "shards": len(shards), "same_tokens": written == bare["tokens"],
        "bare_start_s": round(bare["start_s"], 2), "bare_generate_s": round(bare["cold_s"] - bare["start_s"], 2),
        "stage_wall_s": round(wall, 2),
        "stage_until_actor_starts_s": actor["began_s"],  # Ray Data's plan, a worker process, the stage module's imports
        "actor_start_s": actor["start_s"],  # vLLM's import, the engine's start
        "first_shard_s": first["shard_s"], "first_shard_engine_s": first["engine_s"],  # the engine's warm-up is in its first call
        "shard_engine_s_after_first": round(sum(s["engine_s"] for s in rest), 2),
        "shard_rest_s_after_first": round(sum(s["shard_s"] - s["engine_s"] for s in rest), 3),  # prompts, table, write, hash
        "between_shards_s_after_first": round(steady_s - sum(s["shard_s"] for s in rest), 3),  # Ray Data's hand-offs
    }
    return rows, breakdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus-per-actor", type=float, default=2, help="the sampler actor's CPUs (and so its threads)")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and results.json here")
    parser.add_argument("--bare", type=Path, default=None, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.bare is not None:
        bare_engine(args.bare)
        return

    from fpa_ray.cluster import init_ray

    defaults = RunConfig()
    checkpoint = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    init_ray(num_cpus=4)
    lines, results = [], []
    for prompts in args.prompts:
        rows, breakdown = measure(prompts, args, checkpoint, defaults)
        results.append({"rows": rows, "breakdown": breakdown})
        lines += [f"### {prompts} prompts x {args.n} samples, T=1, up to {args.max_new_tokens} new tokens, shards of {args.shard_size} "
                  f"prompts, tiny policy {checkpoint.name}", "", "```", format_table(rows), "```", "",
                  "where the time went (s): " + ", ".join(f"{k} {v}" for k, v in breakdown.items()), ""]
        print("\n".join(lines[-7:]), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text("\n".join(lines))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
