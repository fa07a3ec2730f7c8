"""The tiny policy's tokenizer and model: built locally, saved, reloaded through Auto* classes."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fpa_ray.data.synthetic import SyntheticTaskConfig, generate
from fpa_ray.tiny import IM_END, TinyModelConfig, build_tiny_policy

TEXTS = ["Start with 12. Add 3. \\boxed{15}", "héllo wörld \t\n  ∑ 🙂 𝔸", "  leading spaces and trailing  ", "\\frac{1}{2}\n\n#### 1,234"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    problems = generate(SyntheticTaskConfig(), "train", 500)
    return build_tiny_policy(tmp_path_factory.mktemp("tiny"), TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))


def test_tokenizer_round_trips_any_text_after_reload(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in tokenizer("∑ 🙂")["input_ids"]


def test_digits_are_single_tokens_and_words_merge(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokens = tokenizer.tokenize("Start with 4536. Multiply by 19")
    assert [t for t in tokens if t.strip("Ġ").isdigit()] == ["4", "5", "3", "6", "1", "9"]
    assert "ĠMultiply" in tokens  # learned merges keep sequences short


def test_chat_template_and_special_tokens(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == IM_END
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and tokenizer.eos_token_id in ids


def test_model_loads_through_auto_classes_and_generates(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    assert model.config.model_type == "qwen2" and model.config.head_dim >= 32
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tokenizer)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    encoded = tokenizer("Start with 5.", return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > encoded["input_ids"].shape[1]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_building_is_deterministic(tmp_path, policy_dir):
    problems = generate(SyntheticTaskConfig(), "train", 500)
    again = build_tiny_policy(tmp_path, TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))
    a = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "tokenizer.json").read_text() == (policy_dir / "tokenizer.json").read_text()
