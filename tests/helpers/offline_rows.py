"""Small offline datasets for learner tests, in the builder's columns, from the synthetic task.

Chosen = the reference solution; rejected = the same solution with a wrong final answer (they share
every token up to the answer, as outcome-labelled pairs from one policy usually do).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from fpa_ray.config import SyntheticTaskConfig
from fpa_ray.data.synthetic import generate


def pair_rows(policy: Path, count: int, seed: int = 3) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(policy)

    def ids(text: str, eos: bool) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])

    rows = []
    for problem in generate(SyntheticTaskConfig(), "train", count, seed=seed):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=False)
        wrong = problem.solution.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{int(problem.answer) + 1}}}")
        rows.append(
            {
                "prompt": prompt, "chosen": problem.solution, "rejected": wrong,
                "prompt_token_ids": ids(prompt, False), "chosen_token_ids": ids(problem.solution, True), "rejected_token_ids": ids(wrong, True),
            }
        )
    return rows


def labelled_rows(policy: Path, count: int, seed: int = 3) -> list[dict]:
    rows = []
    for i, pair in enumerate(pair_rows(policy, count, seed)):
        side = "chosen" if i % 2 == 0 else "rejected"
        rows.append(
            {
                "prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen",
                "prompt_token_ids": pair["prompt_token_ids"], "completion_token_ids": pair[f"{side}_token_ids"],
            }
        )
    return rows
