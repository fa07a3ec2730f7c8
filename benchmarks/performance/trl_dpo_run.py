"""Runs TRL's DPOTrainer on the benchmark's data; executed by learner_throughput.py in TRL's own venv.

Prints one JSON line: steps, seconds per step (after warm-up) and tokens/s counted like fpa_ray's
learner (prompt + response tokens of chosen and rejected rows, no padding).
"""

import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.starts, self.ends = [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main(model_dir: str, data_path: str, steps: int, batch: int, threads: int, output_dir: str) -> None:
    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in open(data_path)]
    tokens_per_row = [len(r["prompt_token_ids"]) * 2 + len(r["chosen_token_ids"]) + len(r["rejected_token_ids"]) for r in rows]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = DPOConfig(
        output_dir=output_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=1e-5, beta=0.1, logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=0, bf16=False, fp16=False, lr_scheduler_type="cosine", max_grad_norm=1.0,
    )
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    # From one step's start to the next (data loading and logging included, as in fpa_ray's count); skip warm-up.
    durations = [b - a for a, b in zip(timer.starts, timer.starts[1:])][2:]
    mean_tokens = sum(tokens_per_row) / len(tokens_per_row) * batch
    print(json.dumps({"steps": len(timer.ends), "seconds_per_step": sum(durations) / len(durations), "tokens_per_s": mean_tokens / (sum(durations) / len(durations))}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
