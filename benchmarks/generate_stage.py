"""The generate stage against its bare engine: tokens/s of samples written by the stage (Ray Data
actor pool, per-sample seeds, one shard per block, Parquet writes, manifest) vs the same engine's
own `generate` on the same prompts and requests, in one run; and where the stage's time goes.

    python benchmarks/generate_stage.py [--prompts 256 --n 8 --shard-size 64]

Three measurements, one after the other on the same machine:
1. bare engine, one call: VLLMEngine in this process, every request at once (the engine's best);
2. bare engine, a call per shard: the same requests cut as the stage cuts them;
3. the stage: GenerateStage.run on a local Ray cluster, one sampler actor, wall time from the
   call to its manifest (the actor's process and engine start included, reported apart).
The model is the embedded default's warm-started tiny policy (cached after the first build).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from fpa_ray.config import RunConfig, SamplerConfig  # noqa: E402
from fpa_ray.data.sources import PromptRow  # noqa: E402
from fpa_ray.data.synthetic import generate  # noqa: E402
from fpa_ray.data.templates import get_template  # noqa: E402
from fpa_ray.demo import format_table  # noqa: E402
from fpa_ray.sampler.engines import SampleRequest, VLLMEngine, sample_seed  # noqa: E402
from fpa_ray.warmstart import warm_start  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    defaults = RunConfig()
    checkpoint = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    problems = [PromptRow(p.id, p.prompt, p.answer, "synthetic") for p in generate(defaults.data.synthetic, "test", args.prompts)]
    config = SamplerConfig(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, dtype="float32", shard_size=args.shard_size)
    template = get_template(defaults.data.template)
    rows = []

    start = time.perf_counter()
    engine = VLLMEngine(checkpoint, config)
    startup = time.perf_counter() - start
    tokenizer = engine.tokenizer
    ids = [tokenizer(template.render(p.prompt, tokenizer), add_special_tokens=False)["input_ids"] for p in problems]
    requests = [SampleRequest(ids[k], sample_seed(args.seed, p.id, i)) for k, p in enumerate(problems) for i in range(args.n)]
    engine.generate(requests[: args.n], stop=template.stop)  # warm-up
    start = time.perf_counter()
    outputs = engine.generate(requests, stop=template.stop)
    one_call = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in outputs)
    rows.append({"what": "engine, one call", "seconds": one_call, "tokens": tokens, "tokens_per_s": tokens / one_call})
    per_shard = args.shard_size * args.n
    start = time.perf_counter()
    shard_tokens = sum(len(c.token_ids) for s in range(0, len(requests), per_shard)
                       for c in engine.generate(requests[s : s + per_shard], stop=template.stop))
    shards = time.perf_counter() - start
    rows.append({"what": f"engine, a call per shard of {args.shard_size}", "seconds": shards, "tokens": shard_tokens,
                 "tokens_per_s": shard_tokens / shards})
    del engine, outputs

    from fpa_ray.cluster import init_ray
    from fpa_ray.sampler.stage import GenerateStage, read_samples

    init_ray(num_cpus=4)
    with tempfile.TemporaryDirectory() as tmp:
        stage = GenerateStage(config, defaults.data.template, args.seed)
        start = time.perf_counter()
        manifest = stage.run(problems, checkpoint, Path(tmp) / "samples")
        wall = time.perf_counter() - start
        written = sum(len(t) for t in read_samples(Path(tmp) / "samples").to_pandas()["response_token_ids"])
        # when each shard landed, from the call's start: the actor's start, then one shard after another
        landed = sorted(p.stat().st_mtime - (time.time() - time.perf_counter() + start) for p in (Path(tmp) / "samples").glob("shard-*.parquet"))
    assert manifest["complete"] and manifest["rows"] == len(requests)
    rows.append({"what": "stage, wall (actor + engine start included)", "seconds": wall, "tokens": written, "tokens_per_s": written / wall})
    rows.append({"what": "stage, wall less the engine's start", "seconds": wall - startup, "tokens": written,
                 "tokens_per_s": written / (wall - startup)})
    for row in rows:
        row["vs_engine"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"{args.prompts} prompts x {args.n} samples, T=1, up to {args.max_new_tokens} new tokens, shards of {args.shard_size} prompts, "
          f"tiny policy {checkpoint.name}; engine start {startup:.1f} s (in this process)")
    print(format_table(rows))
    print(f"shards written at {', '.join(f'{t:.1f}' for t in landed)} s after the call; stage returned at {wall:.1f} s")
    print(json.dumps({"same_tokens": written == tokens}))


if __name__ == "__main__":
    main()
