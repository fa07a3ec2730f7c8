"""Prompt templates: how a problem becomes model input.

- `tiny-chat`: the problem as the only user turn of the tokenizer's chat template (embedded default).
- `qwen25-math-cot`: Qwen2.5-Math's chat prompt, system turn asking for step-by-step reasoning and \\boxed{}.
- `minerva-math-4shot`: the 4-shot MATH prompt of Lewkowycz et al. (2022), text completion, as
  lm-evaluation-harness ships it (its first exemplar's stray `}` included, for comparable numbers).
- `gsm8k-8shot`: the 8-shot chain-of-thought GSM8K prompt of Wei et al. (2022), text completion.
Few-shot templates also give the stop strings that end one answer before the next exemplar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources


def _fewshot(name: str) -> str:
    return resources.files("fpa_ray.data").joinpath("prompts", name).read_text().rstrip("\n")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    chat: bool  # rendered through the tokenizer's chat template, else plain text completion
    system: str | None = None
    prefix: str = ""  # few-shot exemplars for text templates
    question_format: str = "{problem}"
    stop: tuple[str, ...] = field(default_factory=tuple)

    def messages(self, problem: str) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        return turns + [{"role": "user", "content": self.question_format.format(problem=problem)}]

    def render(self, problem: str, tokenizer=None) -> str:
        """The prompt string for `problem`; chat templates need the model's tokenizer."""
        if not self.chat:
            return self.prefix + self.question_format.format(problem=problem)
        if tokenizer is None:
            raise ValueError(f"template {self.name!r} is a chat template and needs the model's tokenizer")
        return tokenizer.apply_chat_template(self.messages(problem), add_generation_prompt=True, tokenize=False)


TEMPLATES = {
    template.name: template
    for template in (
        PromptTemplate("tiny-chat", chat=True),
        PromptTemplate(
            "qwen25-math-cot",
            chat=True,
            system="Please reason step by step, and put your final answer within \\boxed{}.",
        ),
        PromptTemplate(
            "minerva-math-4shot",
            chat=False,
            prefix=_fewshot("minerva_math_4shot.txt") + "\n\n",
            question_format="Problem:\n{problem}\n\nSolution:",
            stop=("\n\nProblem:", "Problem:"),
        ),
        PromptTemplate(
            "gsm8k-8shot",
            chat=False,
            prefix=_fewshot("gsm8k_8shot.txt") + "\n\n",
            question_format="Q: {problem}\nA:",
            stop=("\n\nQ:", "Q:", "</s>", "<|im_end|>"),
        ),
    )
}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
