"""Verifier throughput: checks/s of the Ray verify stage (1 and 2 actors) against math-verify
called directly in one process, on the same inputs, in one run.

    python benchmarks/performance/verifier_throughput.py [--checks 6000]

Direct: extraction + math-verify in this process's main thread, with math-verify's own
(signal) timeouts on. Pool: the VerifyStage on a local Ray cluster, one grading process per
actor, each check under the hard external limit; timed end to end (actor and process start-up
included) and also from its first output batch (steady state). "per CPU" divides by the grading
processes used; the target is >= 0.8 of direct single-process throughput per CPU.
"""

from __future__ import annotations

import argparse
import random
import time

from fpa_ray.cluster import init_ray
from fpa_ray.config import VerifierConfig
from fpa_ray.demo import format_table
from fpa_ray.verifier.extract import extract_answer
from fpa_ray.verifier.graders import grade_math_verify
from fpa_ray.verifier.stage import VerifyStage


def make_inputs(count: int, seed: int = 0) -> list[dict]:
    """A mix like real runs: integers (synthetic task, GSM8K), fractions, decimals, tuples, wrong answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.5:
            gold = str(rng.randint(0, 9999))
            answer = gold if rng.random() < 0.5 else str(rng.randint(0, 9999))
            response = f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = ... \\boxed{{{answer}}}"
        elif kind < 0.7:
            p, q = rng.randint(1, 50), rng.randint(2, 50)
            gold = f"\\frac{{{p}}}{{{q}}}"
            response = f"So the value is $\\boxed{{\\frac{{{p * 2}}}{{{q * 2}}}}}$." if rng.random() < 0.5 else f"\\boxed{{{p / q:.3f}}}"
        elif kind < 0.85:
            gold = f"({rng.randint(0, 9)},{rng.randint(0, 9)})"
            response = f"The point is $\\boxed{{{gold if rng.random() < 0.5 else '(1,1)'}}}$"
        else:
            gold = str(rng.randint(0, 500))
            response = f"Adding up, {gold} in total.\n#### {gold if rng.random() < 0.5 else rng.randint(0, 500)}"
        rows.append({"sample_id": i, "answer": gold, "response": response})
    return rows


def direct(rows: list[dict]) -> tuple[float, int]:
    correct = 0
    start = time.perf_counter()
    for row in rows:
        extracted = extract_answer(row["response"]).answer
        correct += bool(extracted) and bool(grade_math_verify(row["answer"], extracted, 5.0))
    return time.perf_counter() - start, correct


def pooled(ray, rows: list[dict], actors: int) -> tuple[float, float, int]:
    config = VerifierConfig(num_actors=actors, workers_per_actor=1, batch_size=256)
    dataset = VerifyStage(config)(ray.data.from_items(rows, override_num_blocks=max(8, len(rows) // 1000)))
    start = time.perf_counter()
    first = None
    correct = 0
    for batch in dataset.iter_batches(batch_size=1000, batch_format="numpy"):
        if first is None:
            first = (time.perf_counter(), len(batch["status"]))
        correct += int((batch["status"] == "correct").sum())
    end = time.perf_counter()
    steady = (len(rows) - first[1]) / (end - first[0])
    return end - start, steady, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=6_000)
    args = parser.parse_args()
    rows = make_inputs(args.checks)
    grade_math_verify("1", "1", 5.0)  # import and warm up
    seconds, direct_correct = direct(rows)
    base = len(rows) / seconds
    table = [{"setup": "direct, 1 process", "cpus": 1, "checks_per_s": base, "steady_per_s": base, "per_cpu_vs_direct": 1.0, "correct": direct_correct}]
    import ray

    init_ray(num_cpus=4)
    for actors in (1, 2):
        total, steady, correct = pooled(ray, rows, actors)
        table.append(
            {
                "setup": f"VerifyStage, {actors} actor(s)",
                "cpus": actors,
                "checks_per_s": len(rows) / total,
                "steady_per_s": steady,
                "per_cpu_vs_direct": steady / actors / base,
                "correct": correct,
            }
        )
    print(f"{len(rows)} checks, math_verify grader, 5 s limit per check")
    print(format_table(table))


if __name__ == "__main__":
    main()
