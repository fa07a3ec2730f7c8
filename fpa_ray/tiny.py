"""Small Qwen2-architecture models and their tokenizer, built locally with no hub access.

Qwen2 because the paper's models (Qwen2.5-Math) use it and vLLM-CPU runs it; head_dim >= 32
because vLLM-CPU's attention rejects smaller heads. The tokenizer is byte-level BPE with exactly
Qwen2's pipeline (NFC, Qwen's split regex, byte-level), trained on the task's text: transformers
5.x rebuilds any qwen2 tokenizer with that pipeline from vocab and merges, so a different one
would not survive a save and reload. Every digit is its own token, as in Qwen2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from fpa_ray.config import TinyModelConfig

PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# ChatML, as Qwen2.5's template without its default system prompt (the tiny model's context is short).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN2_VOCAB = 151_936  # Qwen2/Qwen2.5 vocabulary size, for memory-realistic benchmarks


def qwen2_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    head_dim: int = 32,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
) -> Qwen2Config:
    """A Qwen2 config with tied embeddings; hidden_size must be a multiple of head_dim."""
    if head_dim < 32 or hidden_size % head_dim:
        raise ValueError(f"need head_dim >= 32 dividing hidden_size, got head_dim={head_dim}, hidden_size={hidden_size}")
    heads = hidden_size // head_dim
    if heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} must divide the {heads} attention heads")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size or 11 * hidden_size // 4,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
    )


def random_qwen2(config: Qwen2Config, seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2ForCausalLM (deterministic in `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Train byte-level BPE with Qwen2's pipeline on `texts`; ChatML special tokens and template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    spec = json.loads(tokenizer.to_str())["model"]
    qwen = Qwen2Tokenizer(
        vocab=spec["vocab"],
        merges=[tuple(m) for m in spec["merges"]],
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    qwen.chat_template = CHAT_TEMPLATE
    return qwen


def build_tiny_policy(output_dir: Path, config: TinyModelConfig, corpus: Iterable[str], seed: int = 0) -> Path:
    """Tokenizer trained on `corpus` plus a random Qwen2 of `config`, saved in Hugging Face format."""
    texts = [f"{IM_START}user\n{IM_END}\n{IM_START}assistant\n", *corpus]
    tokenizer = build_tokenizer(texts, config.tokenizer_vocab)
    vocab = -(-len(tokenizer) // 64) * 64  # pad the embedding to a multiple of 64, as real models do
    model_config = qwen2_config(
        vocab,
        config.hidden_size,
        config.num_layers,
        config.head_dim,
        config.num_kv_heads,
        config.intermediate_size,
        config.max_position_embeddings,
    )
    model_config.eos_token_id = tokenizer.eos_token_id
    model_config.pad_token_id = tokenizer.pad_token_id
    model_config.bos_token_id = None
    model = random_qwen2(model_config, seed=seed)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
