"""Learner throughput: trained tokens/s of fpa_ray's learner group (2 Ray Train workers, DDP and
DeepSpeed ZeRO-2, padded and padding-free) against TRL's DPOTrainer on the same model, data and global
batch, in one run.

    python benchmarks/performance/learner_throughput.py [--steps 30 --batch 16]
    python benchmarks/performance/learner_throughput.py --lengths spread --vocab qwen2 --steps 8

Plain DPO (beta 0.1, online reference model) on correct-vs-wrong-answer pairs of the synthetic
task. `--lengths spread`: each row's solution written out 1 to 8 times (log-uniform), so response
lengths spread over 10x as real math solutions do (24 to about 420 tokens: every pair fits the
tiny policy's 512 positions, so neither trainer cuts one); `uniform` (default) is the task as it is. `--vocab tiny`:
the embedded default's warm-started policy; `qwen2`: the same shape with a random 151,936-token
vocabulary (where the LM head, and so every padded position, dominates the cost). Padding-free cells
pack the same micro-batches (8 pairs per worker) into one row each.
Ours: 2 workers x 1 CPU thread. TRL: one process with 2 threads (the same two cores), padded (its
padding_free needs flash-attention), installed only in benchmarks/.venv-trl (created on first use:
pip install trl==1.16.0 with this project's torch and transformers).
Tokens = prompt + response tokens of both rows of each pair, no padding; steps 1-2 are warm-up. Each
cell's result is kept in benchmarks/results/learner_throughput/ as it finishes, with the command, commit,
date and machine; a rerun measures every cell afresh, or with --resume reuses the recorded ones (the
table's `measured` column says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE.parent / ".venv-trl"
TRL_PINS = ["torch==2.13.0", "transformers==5.19.0", "trl==1.16.0", "accelerate", "datasets"]


def trl_python(extra: tuple[str, ...] = ()) -> Path:
    """The TRL venv's python, with TRL_PINS and `extra` installed (once each; the venv records what it has)."""
    python, record = TRL_VENV / "bin" / "python", TRL_VENV / "fpa_ray_pins.json"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    installed = set(json.loads(record.read_text())) if record.exists() else set()
    if not {*TRL_PINS, *extra} <= installed:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_PINS, *extra], check=True)
        record.write_text(json.dumps(sorted(installed | {*TRL_PINS, *extra})))
    return python


def pair_rows(policy: Path, count: int, spread: bool) -> list[dict]:
    import random

    from transformers import AutoTokenizer

    from fpa_ray.config import SyntheticTaskConfig
    from fpa_ray.data.synthetic import generate

    tokenizer = AutoTokenizer.from_pretrained(policy)
    rows, draw = [], random.Random(5)
    for problem in generate(SyntheticTaskConfig(), "train", count, seed=11):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=False)
        solution = " ".join([problem.solution] * (round(8 ** draw.random()) if spread else 1))
        wrong = solution.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{int(problem.answer) + 1}}}")
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        rows.append({
            "prompt": prompt, "chosen": solution, "rejected": wrong, "prompt_token_ids": ids(prompt),
            "chosen_token_ids": ids(solution) + [tokenizer.eos_token_id], "rejected_token_ids": ids(wrong) + [tokenizer.eos_token_id],
        })
    return rows


def qwen2_vocab_policy(tiny_policy: Path, directory: Path) -> Path:
    """The tiny policy's shape and tokenizer with a random Qwen2-sized (151,936) vocabulary."""
    from transformers import AutoConfig, AutoTokenizer

    from fpa_ray.tiny import QWEN2_VOCAB, random_qwen2

    config = AutoConfig.from_pretrained(tiny_policy)
    config.vocab_size = QWEN2_VOCAB
    random_qwen2(config, seed=0).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_policy).save_pretrained(directory)
    return directory


CELLS = {  # name: (strategy, padding_free)
    "ddp": ("ddp", False), "ddp-padding-free": ("ddp", True),
    "zero2": ("deepspeed", False), "zero2-padding-free": ("deepspeed", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", choices=["uniform", "spread"], default="uniform")
    parser.add_argument("--vocab", choices=["tiny", "qwen2"], default="tiny")
    parser.add_argument("--cells", nargs="+", choices=[*CELLS, "trl"], default=[*CELLS, "trl"])
    parser.add_argument("--resume", action="store_true", help="reuse the cells recorded under benchmarks/results instead of measuring them")
    args = parser.parse_args()

    import ray

    from fpa_ray.cluster import init_ray
    from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig, RunConfig
    from fpa_ray.demo import format_table
    from fpa_ray.learner.worker_group import TrainStage
    from fpa_ray.run_files import provenance
    from fpa_ray.warmstart import warm_start

    name = f"{args.lengths}-{args.vocab}-{args.steps}x{args.batch}"
    results = HERE.parent / "results" / "learner_throughput" / name
    results.mkdir(parents=True, exist_ok=True)
    defaults = RunConfig()
    policy = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    rows = pair_rows(policy, args.steps * args.batch, args.lengths == "spread")
    lengths = sorted(len(r["chosen_token_ids"]) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        if args.vocab == "qwen2":
            policy = qwen2_vocab_policy(policy, Path(tmp) / "policy")
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        recorded = {c for c in args.cells if args.resume and (results / f"{c}.json").exists()}
        todo = [c for c in args.cells if c != "trl" and c not in recorded]
        if todo:
            init_ray(num_cpus=4)
        for cell in todo:
            strategy, packed = CELLS[cell]
            learner = LearnerConfig(strategy=strategy, zero_stage=2, num_workers=2, global_batch_size=args.batch, micro_batch_size=args.batch // 2,
                                    padding_free=packed, lr=1e-5, checkpoint_every=10**6, diagnostics_every=None)
            stage = TrainStage(learner, ObjectiveConfig(name="dpo", params={"beta": 0.1}), FPAConfig(enabled=False), seed=0)
            metrics = stage.run(ray.data.from_items(rows), policy, policy, Path(tmp) / cell).metrics[2:]
            tokens_per_s = sum(m["tokens_per_s"] for m in metrics) / len(metrics)
            (results / f"{cell}.json").write_text(json.dumps({"trainer": f"fpa_ray {cell}, 2 workers", "tokens_per_s": tokens_per_s,
                                                              "provenance": provenance()}))
        if todo:
            ray.shutdown()
        if "trl" in args.cells and "trl" not in recorded:
            trl = subprocess.run([str(trl_python()), str(HERE / "trl_dpo_run.py"), str(policy), str(data), str(args.steps), str(args.batch), "2",
                                  str(Path(tmp) / "trl")], capture_output=True, text=True, check=False)
            if trl.returncode != 0:
                raise SystemExit(f"TRL run failed:\n{trl.stderr[-3000:]}")
            result = json.loads(trl.stdout.strip().splitlines()[-1])
            (results / "trl.json").write_text(json.dumps({"trainer": "TRL DPOTrainer 1.16.0, 1 process x 2 threads, padded",
                                                          "tokens_per_s": result["tokens_per_s"], "provenance": provenance()}))
    table = [json.loads((results / f"{c}.json").read_text()) for c in args.cells if (results / f"{c}.json").exists()]
    trl_row = next((r for r in table if r["trainer"].startswith("TRL")), None)
    for cell, row in zip([c for c in args.cells if (results / f"{c}.json").exists()], table):
        row["vs_trl"] = row["tokens_per_s"] / trl_row["tokens_per_s"] if trl_row else float("nan")
        where = row.pop("provenance", None)
        row["measured"] = ("recorded " + (f"{where['date']}, {where['commit']}" if where else "before provenance was kept")) if cell in recorded else "now"
    header = (f"DPO, {args.vocab} vocabulary, {args.lengths} lengths (chosen response tokens: min {lengths[0]}, median "
              f"{lengths[len(lengths) // 2]}, max {lengths[-1]}), {args.steps} steps of {args.batch} pairs, fp32, CPU")
    (results / "summary.md").write_text(f"{header}\n\n```\n{format_table(table)}\n```\n")
    print(header)
    print(format_table(table))


if __name__ == "__main__":
    main()
