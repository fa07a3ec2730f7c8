"""FPA overhead: one training step of each objective, plain vs FPA (exact, sequence), in one run.

    python benchmarks/performance/fpa_overhead.py                      # CPU, Qwen2 vocabulary (151,936), fp32
    python benchmarks/performance/fpa_overhead.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8

A step = policy forward + reference forward (when the objective or FPA needs it) + log-probs
(+ future log-probs) + objective + backward + AdamW step, on a randomly initialised Qwen2 model
built locally. Plain and FPA steps alternate within each repetition so drift hits both alike;
the table shows median step times, their ratio to the plain step, and peak memory of one step
(CUDA: max_memory_allocated; CPU: peak RSS of a fresh process running one step, less its RSS
before the step, with AdamW's state already allocated). Reference-free objectives (simper, offline_rl, reinforce) pay a reference
forward under FPA that they otherwise skip; the `ref` column says when the reference ran.

`plain+pre` and `sequence+pre` take the reference's summed log-probs precomputed once (what
`learner.reference=precomputed` gives the learner): no reference forward in the step, for any
objective; their ratio (`vs` plain+pre) is FPA sequence mode's own price. Exact mode has no such
variant: its log Z_t needs the reference's full distribution at every position.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import statistics
import sys
import time

import psutil
import torch

from fpa_ray.config import FPAConfig
from fpa_ray.demo import format_table, fpa_objectives, synthetic_pairs
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.learner.optimizer_step import objective_loss
from fpa_ray.objectives import get_objective, masked_sum, token_logprobs
from fpa_ray.tiny import QWEN2_VOCAB, qwen2_config, random_qwen2

MODES = ("plain", "exact", "sequence", "plain+pre", "sequence+pre")
BASELINE = {"plain": "plain", "exact": "plain", "sequence": "plain", "plain+pre": "plain+pre", "sequence+pre": "plain+pre"}
# glibc returns each freed multi-hundred-MB logits buffer to the OS and page-faults it back in on
# the next step; measured here that doubled the CPU step time (5.4 s -> 2.0 s) and its noise.
# Keeping freed memory in the process needs both settings, before the interpreter starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def _fpa(mode: str, args: argparse.Namespace) -> FPAConfig:
    if mode.startswith("plain"):
        return FPAConfig(enabled=False, chunk_size=args.chunk_size)
    return FPAConfig(enabled=True, lam=args.lam, mode=mode.removesuffix("+pre"), chunk_size=args.chunk_size)


def _setup(args: argparse.Namespace):
    dtype = getattr(torch, args.dtype)
    config = qwen2_config(args.vocab, args.hidden, args.layers, num_kv_heads=args.kv_heads)
    reference = random_qwen2(config, seed=0, dtype=dtype).to(args.device).eval()
    policy = copy.deepcopy(reference).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    batch = synthetic_pairs(args.vocab, args.pairs, args.prompt_len, args.response_len - 8, 8)
    batch = type(batch)(*(t.to(args.device) for t in (batch.input_ids, batch.attention_mask, batch.response_mask, batch.correct)))
    with torch.no_grad():  # once per dataset, as learner/reference.py precomputes them
        labels, mask = shifted_targets(batch)
        logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ref_logp = masked_sum(token_logprobs(logits, labels, mask), mask)
    return policy, reference, optimizer, batch, ref_logp


def _step(name: str, mode: str, args, policy, reference, optimizer, batch, ref_logp) -> None:
    # KTO's z0 (two no-grad forwards over the global batch per step, the same with and without FPA)
    # is outside what this benchmark compares: a fixed z0 stands in for it.
    z0 = torch.zeros((), device=args.device) if get_objective(name).needs_kl_reference else None
    precomputed = mode.endswith("+pre")
    out = objective_loss(get_objective(name), {}, policy, None if precomputed else reference, batch, _fpa(mode, args),
                         ref_logp=ref_logp if precomputed else None, kl_reference=z0)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _high_water_mark() -> int:
    """This process's peak RSS in bytes (Linux VmHWM: unlike ru_maxrss it does not survive exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu_peak_child(name: str, mode: str, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(args.threads)
    state = _setup(args)
    policy, _, optimizer, _, _ = state
    for param in policy.parameters():  # allocate AdamW's state now: it is not per-step memory
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
    before = psutil.Process().memory_info().rss
    _step(name, mode, args, *state)
    queue.put(_high_water_mark() - before)


def peak_memory(name: str, mode: str, args: argparse.Namespace, state) -> float:
    """Peak extra bytes of one step (see module docstring)."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(name, mode, args, *state)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # A fresh process with glibc's default settings, so that freed buffers leave the RSS
    # and one step's peak is its own.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_cpu_peak_child, args=(name, mode, args, queue))
    saved = {k: os.environ.pop(k) for k in MALLOC_ENV if k in os.environ}
    try:
        child.start()
    finally:
        os.environ.update(saved)
    value = queue.get()
    child.join()
    return value


def main() -> None:
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=QWEN2_VOCAB)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (2x rows)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="positions per chunk (default: automatic)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--objectives", default=",".join(fpa_objectives()))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    state = _setup(args)
    tokens = int(state[3].attention_mask.sum())
    print(
        f"device={args.device} dtype={args.dtype} vocab={args.vocab} hidden={args.hidden} layers={args.layers} "
        f"params={sum(p.numel() for p in state[0].parameters()) / 1e6:.1f}M rows={2 * args.pairs} tokens/step={tokens} "
        f"lam={args.lam} chunk={args.chunk_size} reps={args.reps} threads={args.threads}",
        flush=True,
    )
    rows = []
    for name in args.objectives.split(","):
        objective = get_objective(name)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for mode in MODES:  # warm-up
            _step(name, mode, args, *state)
        for _ in range(args.reps):
            for mode in MODES:
                _sync(args.device)
                start = time.perf_counter()
                _step(name, mode, args, *state)
                _sync(args.device)
                times[mode].append(time.perf_counter() - start)
        memory = {} if args.no_memory else {mode: peak_memory(name, mode, args, state) for mode in MODES}
        for mode in MODES:
            median, base = statistics.median(times[mode]), BASELINE[mode]
            uses_reference = objective.needs_reference or not mode.startswith("plain")
            row = {
                "objective": name,
                "mode": mode,
                "ref": ("sums" if mode.endswith("+pre") else "forward") if uses_reference else "no",
                "step_ms": 1000 * median,
                "vs": base,
                "time/vs": median / statistics.median(times[base]),
            }
            if memory:
                row["peak_MiB"] = memory[mode] / 2**20
                row["mem/vs"] = memory[mode] / memory[base]
            rows.append(row)
        print(format_table(rows[-len(MODES):]).split("\n", 1)[1] if len(rows) > len(MODES) else format_table(rows), flush=True)
    print("\n" + format_table(rows))


if __name__ == "__main__":
    main()
