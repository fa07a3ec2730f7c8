"""GRPO's learner step, padded vs padding-free, side by side in one run: what `learner.padding_free`
saves the online baseline on rollouts whose lengths spread as math solutions do.

    python benchmarks/performance/grpo_packing.py [--rows 32 --micro 8 --reps 5 --vocab 151936]

A step is what one GRPO learner worker does per optimizer step (fpa_ray/learner/grpo_loop.py, the same
functions): the sampling policy's log-probs of every row (one no-grad pass, as with more than one
mini-batch per rollout), then per micro-batch the policy's forward, the clipped objective with a
KL term and backward, then AdamW. Rows: prompts of 30-40 tokens, responses log-uniform in 24-420
tokens (seeded), on a randomly initialised Qwen2 built locally. The two layouts alternate within each
repetition, so drift hits both alike; the first repetition is warm-up. Tokens = prompt + response
tokens, no padding.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from fpa_ray.demo import format_table
from fpa_ray.learner.backends import Precision
from fpa_ray.learner.data import Example, MicroBatching, collate
from fpa_ray.learner.grpo_loop import _token_logps, grpo_loss
from fpa_ray.objectives import get_objective
from fpa_ray.tiny import qwen2_config, random_qwen2

CPU = torch.device("cpu")


def rollout(rows: int, vocab: int, seed: int) -> tuple[list[Example], torch.Tensor]:
    draw = random.Random(seed)
    ids = lambda n: tuple(draw.randrange(1, vocab) for _ in range(n))  # noqa: E731
    examples = [Example(ids(draw.randint(30, 40)), (ids(round(24 * (420 / 24) ** draw.random())),), label=False) for _ in range(rows)]
    return examples, torch.tensor([draw.gauss(0.0, 1.0) for _ in range(rows)])


def step(model, optimizer, examples: list[Example], advantages: torch.Tensor, micro: int, packed: bool) -> float:
    batching = MicroBatching(micro, packed=packed)
    begun = time.perf_counter()
    old = _token_logps(model, examples, batching, 0, CPU, Precision(torch.float32, torch.float32))
    normalizer = float(sum(len(e.responses[0]) for e in examples))
    objective = get_objective("grpo")
    for start in range(0, len(examples), micro):
        rows = list(range(start, min(start + micro, len(examples))))
        batch, _ = collate([examples[i] for i in rows], "labelled", 0, CPU, packed=packed)
        out, _ = grpo_loss(objective, {"clip_eps": 0.2, "kl_coef": 0.0}, model, batch, advantages[rows], normalizer, [old[i] for i in rows])
        out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - begun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="rows per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="rows per forward pass")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = qwen2_config(args.vocab, hidden_size=args.hidden, num_layers=args.layers, max_position_embeddings=512)
    models = {layout: random_qwen2(config, seed=0) for layout in ("padded", "padding-free")}
    optimizers = {layout: torch.optim.AdamW(model.parameters(), lr=1e-6) for layout, model in models.items()}
    times: dict[str, list[float]] = {layout: [] for layout in models}
    tokens = 0
    for rep in range(args.reps + 1):
        examples, advantages = rollout(args.rows, args.vocab, seed=rep)
        tokens = sum(e.num_tokens for e in examples)
        order = list(models) if rep % 2 == 0 else list(reversed(models))
        for layout in order:
            seconds = step(models[layout], optimizers[layout], examples, advantages, args.micro, layout == "padding-free")
            if rep > 0:  # the first repetition warms up
                times[layout].append(seconds / tokens)
    rows = [{"layout": layout, "median_s_per_1k_tokens": 1000 * statistics.median(t), "tokens_per_s": 1 / statistics.median(t)}
            for layout, t in times.items()]
    for row in rows:
        row["vs_padded"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"GRPO learner step, {args.rows} rows x micro-batches of {args.micro}, responses 24-420 tokens (~{tokens} tokens a step), "
          f"random Qwen2 hidden {args.hidden} x {args.layers} layers, vocabulary {args.vocab}, fp32, {args.threads} threads, "
          f"{args.reps} repetitions after a warm-up")
    print(format_table(rows))


if __name__ == "__main__":
    main()
