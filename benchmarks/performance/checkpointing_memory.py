"""Gradient checkpointing on the CPU: one FPA-RPO learner step with and without it, side by side.

    python benchmarks/performance/checkpointing_memory.py [--out benchmarks/results/checkpointing_memory.json]

For the tiny default's policy and a Qwen2.5-1.5B-shaped model cut to 2 layers (hidden 1536, MLP 8960,
the 151,936-token vocabulary), each cell in a fresh process: the learner's own DDP backend and
train_step (fp32, exact FPA, lambda 1) on 4 pairs of 64 prompt + 192 response tokens in one micro-batch,
padded and padding-free. It reports the step's loss and gradient norm (checkpointed vs not: they must
agree to float tolerance), the largest gradient difference, the bytes autograd keeps for the backward
pass (every saved tensor's storage once, weights left out: what checkpointing drops), the process's peak
resident memory above what it held before the step (ru_maxrss: coarse, the allocator keeps freed
memory), and the step's seconds (timed while nothing else ran, one run each: noisy). On 2 layers checkpointing can only
save those layers' activations; the logits and the model are the same either way.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODELS = {
    "tiny": {"vocab_size": 384, "hidden_size": 128, "num_layers": 4, "num_kv_heads": 2, "intermediate_size": 352},
    "1.5B-shaped, 2 layers": {"vocab_size": 151936, "hidden_size": 1536, "num_layers": 2, "head_dim": 128, "num_kv_heads": 2,
                              "intermediate_size": 8960},
}
PAIRS, PROMPT, RESPONSE = 4, 64, 192


def _cell(model_dir: str, vocab: int, checkpointing: bool, packed: bool, queue) -> None:
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
                            gradient_checkpointing=checkpointing, padding_free=packed)
    torch.manual_seed(0)
    backend = build_backend(learner, model_dir, None, 1, torch.device("cpu"))
    reference = backend.frozen_reference(model_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    grads = {}

    def keep(name):  # the gradient before the optimizer steps
        return lambda grad: grads.__setitem__(name, grad.detach().clone())

    hooks = [p.register_hook(keep(n)) for n, p in backend.unwrapped.named_parameters()]
    weights = {p.untyped_storage().data_ptr() for p in [*backend.unwrapped.parameters(), *reference.parameters()]}
    saved: dict[int, int] = {}  # storages autograd keeps for the backward pass (not weights): what checkpointing drops

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        metrics = train_step(backend, get_objective("rpo"), {}, reference, rows, list(range(PAIRS)), "paired", 0,
                             FPAConfig(enabled=True, lam=1.0), MicroBatching.of(learner), learner.max_length, precomputed=False)
    seconds = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(grads, Path(model_dir).parent / f"grads-{checkpointing}-{packed}.pt")
    queue.put({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"], "peak_above_start_mb": (peak - before) / 1024,
               "saved_for_backward_mb": sum(saved.values()) / 2**20,
               "step_s": seconds, "checkpointing_on": backend.unwrapped.is_gradient_checkpointing})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/checkpointing_memory.json"))
    args = parser.parse_args(argv)
    import torch

    from fpa_ray.tiny import qwen2_config, random_qwen2

    context = mp.get_context("spawn")
    results = []
    for name, shape in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            random_qwen2(qwen2_config(**shape), seed=0).save_pretrained(model_dir)
            for packed in (False, True):
                cells = {}
                for checkpointing in (False, True):
                    queue = context.Queue()
                    process = context.Process(target=_cell, args=(str(model_dir), shape["vocab_size"], checkpointing, packed, queue))
                    process.start()
                    cells[checkpointing] = queue.get()
                    process.join()
                plain = torch.load(Path(tmp) / f"grads-False-{packed}.pt")
                checked = torch.load(Path(tmp) / f"grads-True-{packed}.pt")
                worst = max(float((checked[k] - g).abs().max() / g.abs().max().clamp_min(1e-30)) for k, g in plain.items())
                row = {"model": name, "layout": "padding-free" if packed else "padded", "without": cells[False], "with": cells[True],
                       "loss_rel_diff": abs(cells[True]["loss"] - cells[False]["loss"]) / abs(cells[False]["loss"]),
                       "grad_max_rel_diff": worst,
                       "peak_ratio": cells[True]["peak_above_start_mb"] / cells[False]["peak_above_start_mb"],
                       "saved_ratio": cells[True]["saved_for_backward_mb"] / cells[False]["saved_for_backward_mb"]}
                results.append(row)
                print(f"{name:<22} {row['layout']:<12} kept for backward {cells[False]['saved_for_backward_mb']:7.1f} -> "
                      f"{cells[True]['saved_for_backward_mb']:7.1f} MB ({row['saved_ratio']:.2f}x), peak above start {cells[False]['peak_above_start_mb']:7.1f} -> "
                      f"{cells[True]['peak_above_start_mb']:7.1f} MB ({row['peak_ratio']:.2f}x), step {cells[False]['step_s']:.2f} -> "
                      f"{cells[True]['step_s']:.2f} s, loss rel diff {row['loss_rel_diff']:.1e}, grad max rel diff {worst:.1e}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "commit": commit, "date": datetime.now(UTC).isoformat(),
                                    "machine": f"{platform.node()} {platform.machine()}, {mp.cpu_count()} cores", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
