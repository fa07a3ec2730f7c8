import pytest

from fpa_ray.data.templates import TEMPLATES, get_template


class ChatTokenizer:
    """Renders messages as ChatML, like the tiny tokenizer's template."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"


def test_qwen_math_template_has_the_boxed_system_turn():
    text = get_template("qwen25-math-cot").render("What is 2+2?", ChatTokenizer())
    assert text.startswith("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert get_template("tiny-chat").render("Q", ChatTokenizer()) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_fewshot_templates_hold_their_exemplars_and_end_with_the_question():
    minerva = get_template("minerva-math-4shot").render("What is $1+1$?")
    assert minerva.count("Problem:\n") == 5 and minerva.count("Final Answer: The final answer is") == 4
    assert minerva.endswith("\n\nProblem:\nWhat is $1+1$?\n\nSolution:")
    gsm8k = get_template("gsm8k-8shot").render("How many eggs?")
    assert gsm8k.count("Q: ") == 9 and gsm8k.count("The answer is") == 8
    assert gsm8k.endswith("\n\nQ: How many eggs?\nA:")
    assert "Q:" in get_template("gsm8k-8shot").stop


def test_errors():
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        get_template("qwen25-math-cot").render("x")
    with pytest.raises(ValueError, match=r"unknown prompt template 'qwen'.*gsm8k-8shot"):
        get_template("qwen")
    assert set(TEMPLATES) == {"tiny-chat", "qwen25-math-cot", "minerva-math-4shot", "gsm8k-8shot"}
