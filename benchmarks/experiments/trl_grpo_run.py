"""Runs TRL's GRPOTrainer on one testbed cell's prompts; executed by trl_grpo_testbed.py in TRL's own venv.

    python trl_grpo_run.py <policy dir> <prompts.jsonl> <out dir> <settings.json>

The prompts come step by step, in the order fpa_ray's GRPO run sampled them (`prompts_per_step`
rows a step), and TRL takes them in that order (shuffle_dataset=False), so both trainers see the
same prompts at every step; each reward call is checked to be its step's prompts. The reward is
fpa_ray's own grader (fpa_ray.verifier.pool.GradingPool, imported from the repository), so the
two runs differ only in the trainer. Writes <out>/model (the final policy, with its tokenizer),
<out>/rewards.jsonl (each rollout's mean reward and seconds) and prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: fpa_ray's grader
from fpa_ray.verifier.pool import GradingPool  # noqa: E402


class Reward:
    """fpa_ray's verdict (1.0 correct, else 0.0) for each completion; one call is one rollout."""

    __name__ = "fpa_ray_grader"  # TRL names its reward metrics by the function's __name__

    def __init__(self, grader: str, timeout_s: float, steps: list[list[str]], group: int, log: Path):
        self.pool, self.timeout_s = GradingPool(grader, 1, timeout_s), timeout_s
        self.steps, self.group, self.log, self.calls, self.last = steps, group, log, 0, time.perf_counter()

    def __call__(self, prompts, completions, answer, prompt_id, **kwargs):
        expected = [p for p in self.steps[self.calls] for _ in range(self.group)]
        if list(prompt_id) != expected:
            raise RuntimeError(f"rollout {self.calls}: TRL sampled other prompts than fpa_ray's step {self.calls}")
        verdicts = self.pool.grade([(gold, c[-1]["content"]) for gold, c in zip(answer, completions)])
        rewards = [v.reward for v in verdicts]
        now = time.perf_counter()
        with self.log.open("a") as f:
            f.write(json.dumps({"rollout": self.calls, "reward_mean": sum(rewards) / len(rewards), "seconds": round(now - self.last, 2),
                                "mean_completion_chars": sum(len(c[-1]["content"]) for c in completions) / len(completions)}) + "\n")
        self.calls, self.last = self.calls + 1, now
        return rewards


def main(policy: str, prompts_path: str, out: str, settings_path: str) -> None:
    settings = json.loads(Path(settings_path).read_text())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings["threads"])
    rows = [json.loads(line) for line in Path(prompts_path).read_text().splitlines()]
    per_step, group = settings["prompts_per_step"], settings["num_generations"]
    steps = [[r["prompt_id"] for r in rows[i : i + per_step]] for i in range(0, len(rows), per_step)]
    tokenizer = AutoTokenizer.from_pretrained(policy)
    for row in rows[:per_step]:  # TRL renders a conversational prompt with the tokenizer's chat template
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["problem"]}], add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        if list(ids) != row["prompt_token_ids"]:
            raise RuntimeError(f"{row['prompt_id']}: TRL's prompt tokens differ from those fpa_ray sampled from")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"]}], "answer": r["answer"], "prompt_id": r["prompt_id"]}
                                 for r in rows])
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    rewards_log = out_dir / "rewards.jsonl"
    rewards_log.unlink(missing_ok=True)
    reward = Reward(settings["grader"], settings["grader_timeout_s"], steps, group, rewards_log)
    batch = settings["per_device_train_batch_size"]
    config = GRPOConfig(
        output_dir=str(out_dir / "trainer"), seed=settings["seed"], use_cpu=True, bf16=False, fp16=False, report_to=[],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=settings["global_batch_size"] // batch,
        steps_per_generation=per_step * group // batch,
        num_generations=group, num_iterations=1, shuffle_dataset=False,
        max_completion_length=settings["max_new_tokens"], temperature=settings["temperature"], top_p=settings["top_p"],
        beta=settings["kl_coef"], epsilon=settings["clip_eps"], loss_type="dapo", scale_rewards="group",
        learning_rate=settings["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=settings["weight_decay"],
        adam_beta1=settings["adam_betas"][0], adam_beta2=settings["adam_betas"][1], max_grad_norm=settings["grad_clip"],
        optim="adamw_torch", gradient_checkpointing=False, disable_dropout=True,
        max_steps=len(steps) * per_step * group // settings["global_batch_size"],
        save_strategy="no", logging_steps=per_step * group // settings["global_batch_size"], dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if reward.calls != len(steps):
        raise RuntimeError(f"TRL ran {reward.calls} rollouts, fpa_ray {len(steps)}")
    trainer.model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    print(json.dumps({"rollouts": reward.calls, "optimizer_steps": trainer.state.global_step, "train_seconds": round(seconds, 1),
                      "trl": __import__("trl").__version__, "transformers": __import__("transformers").__version__,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
