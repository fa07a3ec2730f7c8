"""Learner throughput: trained tokens/s of fpa_ray's learner group (2 Ray Train workers, DDP and
DeepSpeed ZeRO-2) against TRL's DPOTrainer on the same model, data and global batch, in one run.

    python benchmarks/learner_throughput.py [--steps 30 --batch 16]

Plain DPO (beta 0.1, online reference model) on correct-vs-wrong-answer pairs of the synthetic
task, with the embedded default's warm-started tiny policy. Ours: 2 workers x 1 CPU thread.
TRL: one process with 2 threads (the same two cores), installed only in benchmarks/.venv-trl
(created on first use: pip install trl==1.16.0 with this project's torch and transformers).
Tokens = prompt + response tokens of both rows of each pair, no padding; steps 1-2 are warm-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_VENV = HERE / ".venv-trl"
TRL_PINS = ["torch==2.13.0", "transformers==5.19.0", "trl==1.16.0", "accelerate", "datasets"]


def trl_python() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_PINS], check=True)
    return python


def pair_rows(policy: Path, count: int) -> list[dict]:
    from transformers import AutoTokenizer

    from fpa_ray.config import SyntheticTaskConfig
    from fpa_ray.data.synthetic import generate

    tokenizer = AutoTokenizer.from_pretrained(policy)
    rows = []
    for problem in generate(SyntheticTaskConfig(), "train", count, seed=11):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=False)
        wrong = problem.solution.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{int(problem.answer) + 1}}}")
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        rows.append({
            "prompt": prompt, "chosen": problem.solution, "rejected": wrong, "prompt_token_ids": ids(prompt),
            "chosen_token_ids": ids(problem.solution) + [tokenizer.eos_token_id], "rejected_token_ids": ids(wrong) + [tokenizer.eos_token_id],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    import ray

    from fpa_ray.cluster import init_ray
    from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig, RunConfig
    from fpa_ray.demo import format_table
    from fpa_ray.learner.trainer import TrainStage
    from fpa_ray.warmstart import warm_start

    defaults = RunConfig()
    policy = warm_start(defaults.policy.tiny, defaults.policy.sft, defaults.data.synthetic).path
    rows = pair_rows(policy, args.steps * args.batch)
    python = trl_python()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        init_ray(num_cpus=4)
        for strategy in ("ddp", "deepspeed"):
            learner = LearnerConfig(strategy=strategy, zero_stage=2, num_workers=2, global_batch_size=args.batch, micro_batch_size=args.batch // 2,
                                    lr=1e-5, checkpoint_every=10**6)
            stage = TrainStage(learner, ObjectiveConfig(name="dpo", params={"beta": 0.1}), FPAConfig(enabled=False), seed=0)
            metrics = stage.run(ray.data.from_items(rows), policy, policy, Path(tmp) / strategy).metrics[2:]
            table.append({"trainer": f"fpa_ray {strategy}{'-zero2' if strategy == 'deepspeed' else ''}, 2 workers",
                          "tokens_per_s": sum(m["tokens_per_s"] for m in metrics) / len(metrics)})
        ray.shutdown()
        trl = subprocess.run([str(python), str(HERE / "trl_dpo_run.py"), str(policy), str(data), str(args.steps), str(args.batch), "2", str(Path(tmp) / "trl")],
                             capture_output=True, text=True, check=False)
        if trl.returncode != 0:
            raise SystemExit(f"TRL run failed:\n{trl.stderr[-3000:]}")
        result = json.loads(trl.stdout.strip().splitlines()[-1])
        table.append({"trainer": "TRL DPOTrainer 1.16.0, 1 process x 2 threads", "tokens_per_s": result["tokens_per_s"]})
    for row in table:
        row["vs_trl"] = row["tokens_per_s"] / table[-1]["tokens_per_s"]
    print(f"DPO, tiny policy, {args.steps} steps of {args.batch} pairs, fp32, CPU")
    print(format_table(table))


if __name__ == "__main__":
    main()
