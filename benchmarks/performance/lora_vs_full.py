"""LoRA against full fine-tuning on the CPU, side by side: the learner's step and GRPO's weight sync.

    python benchmarks/performance/lora_vs_full.py [--models tiny 1.5B-shaped] [--rank 16] [--steps 3]

For the tiny default's policy shape and a Qwen2.5-1.5B-shaped model cut to 2 layers (hidden 1536, MLP
8960, the 151,936-token vocabulary), random weights, each cell in a fresh process:
- learner: fpa_ray's DDP backend and train_step (fp32, FPA-RPO exact, lambda 1, the reference being
  the starting policy: a second model for full fine-tuning, the policy with its adapters off for LoRA)
  on 4 pairs of 64 prompt + 192 response tokens in one micro-batch; one warm-up step, then `--steps`
  timed ones. Trained tokens/s (both rows of every pair, no padding), the process's peak resident
  memory above what it held before loading the model (ru_maxrss: coarse, the allocator keeps freed
  memory), trainable parameters and the optimizer's state.
- sync: GRPO's collective transport as the run does it, into a live vLLM-CPU engine in the same process
  (its learner end a thread, rank 0 of a gloo group): every weight by name, or the rank-`rank`
  adapters on every linear layer (what fpa_ray/learner/worker_records.SentWeights sends), which the
  engine merges into its start checkpoint before reloading (fpa_ray/weights/adapters.py). Bytes per
  sync, and seconds from the first tensor sent until the engine has reloaded, median of 3 after one
  warm-up; the probe's log-prob gap between the engine and the learner's adapted model checks that
  the merged weights are the trained ones.
Writes benchmarks/results/lora_vs_full/summary.md (and summary.json) with the command, commit, date
and machine. Time it only with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": {"vocab_size": 384, "hidden_size": 128, "num_layers": 4, "num_kv_heads": 2, "intermediate_size": 352},
    "1.5B-shaped": {"vocab_size": 151936, "hidden_size": 1536, "num_layers": 2, "head_dim": 128, "num_kv_heads": 2,
                    "intermediate_size": 8960},
}
PAIRS, PROMPT, RESPONSE = 4, 64, 192
RESULTS = Path(__file__).resolve().parents[1] / "results" / "lora_vs_full"


def _lora(rank: int):
    from fpa_ray.config import LoRAConfig

    return LoRAConfig(rank=rank, alpha=2.0 * rank, target_modules="all-linear")


def _learner_cell(model_dir: str, vocab: int, rank: int | None, steps: int, queue) -> None:
    import torch

    torch.set_num_threads(2)
    from fpa_ray.config import FPAConfig, LearnerConfig
    from fpa_ray.learner.backends import build_backend
    from fpa_ray.learner.data import Example, MicroBatching
    from fpa_ray.learner.optimizer_step import train_step
    from fpa_ray.objectives import get_objective

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(PAIRS):
        prompt = torch.randint(1, vocab, (PROMPT,), generator=generator).tolist()
        shared = torch.randint(1, vocab, (RESPONSE - 16,), generator=generator).tolist()
        rows.append(Example(tuple(prompt), tuple(tuple(shared + torch.randint(1, vocab, (16,), generator=generator).tolist()) for _ in range(2))))
    learner = LearnerConfig(num_workers=1, global_batch_size=PAIRS, micro_batch_size=PAIRS, lr=1e-5, precision="fp32",
                            lora=None if rank is None else _lora(rank))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    backend = build_backend(learner, model_dir, None, steps + 1, torch.device("cpu"))
    reference = backend.frozen_reference(model_dir)  # the starting policy: FPA's exact reference
    seconds = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        train_step(backend, get_objective("rpo"), {}, reference, rows, list(range(PAIRS)), "paired", 0,
                   FPAConfig(enabled=True, lam=1.0), MicroBatching.of(learner), learner.max_length, precomputed=False)
        seconds.append(time.perf_counter() - started)
    tokens = sum(2 * len(r.prompt) + sum(len(x) for x in r.responses) for r in rows)
    state = backend.optimizer.state_dict()["state"]
    queue.put({"tokens_per_s": tokens * steps / sum(seconds[1:]), "step_s": statistics.median(seconds[1:]),
               "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
               "trainable": sum(p.numel() for p in backend.unwrapped.parameters() if p.requires_grad),
               "optimizer_mb": sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t)) / 2**20})


def _sync_cell(model_dir: str, rank: int, queue) -> None:
    """Both syncs into one live vLLM-CPU engine started on `model_dir` (its learner end: a thread in this process)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    import socket
    import threading
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    from fpa_ray.config import SamplerConfig
    from fpa_ray.learner.lora import adapter_weights, merged_state_dict, save_merged, with_adapters
    from fpa_ray.sampler.engines import VLLMEngine
    from fpa_ray.weights import group as weight_group
    from fpa_ray.weights.adapters import AdapterMerge
    from fpa_ray.weights.probe import probe_gap
    from fpa_ray.weights.transports import Collective, nbytes

    engine = VLLMEngine(Path(model_dir), SamplerConfig(engine="vllm", dtype="float32", max_num_seqs=8, max_model_len=512))
    lora = _lora(rank)
    adapted = with_adapters(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    # Both move the engine to the same policy: full fine-tuning sends its every weight, LoRA its adapters.
    payloads = {"full": (list(merged_state_dict(adapted).items()), None),
                "lora": ([(n, t.detach()) for n, t in adapter_weights(adapted)], AdapterMerge(model_dir, lora.alpha / lora.rank))}
    results = {}
    for kind, (named, merge) in payloads.items():
        seconds = []
        for attempt in range(4):  # one warm-up
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            address = weight_group.GroupAddress(f"bench-{kind}-{attempt}", "127.0.0.1", port, 2, "gloo")
            sender = replace(address, name=f"{address.name}-sender")  # both ranks in one process: two registry keys
            started: list[float] = []
            thread = threading.Thread(target=_send, args=(sender, [t for _, t in named], started))
            thread.start()
            engine.join_weight_group(address, 1, "127.0.0.1")
            Collective.receive(engine, (address.name, weight_group.specs(named)), None, 1.0, merge)
            done = time.perf_counter()
            thread.join()
            weight_group.leave(address.name)
            weight_group.leave(sender.name)
            seconds.append(done - started[0])
        with tempfile.TemporaryDirectory() as tmp:  # what the engine now holds against the learner's adapted model
            save_merged(adapted, Path(tmp))
            gap = probe_gap(engine, Path(tmp))
        results[kind] = {"bytes": nbytes(t for _, t in named), "tensors": len(named), "sync_s": statistics.median(seconds[1:]), "probe_gap": gap}
    queue.put(results)


def _send(address, tensors: list, started: list[float]) -> None:
    """The learner's rank 0: join the group, then broadcast every tensor (`started`: when the first goes)."""
    import torch

    from fpa_ray.weights import group as weight_group

    weight_group.join(address, 0, "127.0.0.1")
    started.append(time.perf_counter())
    weight_group.send(address.name, tensors, torch.device("cpu"))


def _spawn(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from fpa_ray.run_files import provenance
    from fpa_ray.tiny import build_tokenizer, qwen2_config, random_qwen2

    rows = {}
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            random_qwen2(qwen2_config(**MODELS[name]), seed=0).save_pretrained(model_dir)
            build_tokenizer(["Start with 38. Add 54, then multiply by 3. \\boxed{276}"] * 4, 300).save_pretrained(model_dir)  # for the engine
            rows[name] = {"full": _spawn(_learner_cell, str(model_dir), MODELS[name]["vocab_size"], None, args.steps),
                          "lora": _spawn(_learner_cell, str(model_dir), MODELS[name]["vocab_size"], args.rank, args.steps),
                          "sync": _spawn(_sync_cell, str(model_dir), args.rank)}
        print(name, json.dumps(rows[name]), flush=True)
    now = provenance()
    lines = ["# LoRA against full fine-tuning on the CPU: the learner's step and GRPO's weight sync", "",
             f"Written by `{now['command']}` at commit {now['commit']}, {now['date']}, on {now['machine']}; nothing else running.", "",
             f"Random weights; LoRA rank {args.rank}, alpha {2 * args.rank}, every linear layer. Learner: one process, 2 threads, fp32, "
             f"FPA-RPO exact on {PAIRS} pairs of {PROMPT} + {RESPONSE} tokens, median of {args.steps} steps after a warm-up; the reference "
             "is the starting policy (full: a second model; LoRA: adapters off). Sync: the collective transport over gloo into a live "
             "vLLM-CPU engine, from the first tensor sent until the engine has reloaded (LoRA: merged into its start checkpoint first), "
             "median of 3 after a warm-up.", "",
             "| model | method | trainable parameters | optimizer state MiB | peak memory above start MiB | learner tokens/s | sync MiB | sync s | probe gap after the sync |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for method in ("full", "lora"):
            cell, sync = row[method], row["sync"][method]
            lines.append(f"| {name} | {method} | {cell['trainable']:,} | {cell['optimizer_mb']:.1f} | {cell['peak_mb']:.0f} | {cell['tokens_per_s']:,.0f} "
                         f"| {sync['bytes'] / 2**20:.2f} | {sync['sync_s']:.3f} | {sync['probe_gap']:.1e} |")
        full, lora = row["full"], row["lora"]
        lines.append(f"| {name} | LoRA / full | {lora['trainable'] / full['trainable']:.4f} | {lora['optimizer_mb'] / full['optimizer_mb']:.4f} "
                     f"| {lora['peak_mb'] / full['peak_mb']:.2f} | {lora['tokens_per_s'] / full['tokens_per_s']:.2f} "
                     f"| {row['sync']['lora']['bytes'] / row['sync']['full']['bytes']:.4f} | {row['sync']['lora']['sync_s'] / row['sync']['full']['sync_s']:.2f} | |")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    (args.results / "summary.json").write_text(json.dumps({"provenance": now, "rank": args.rank, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
