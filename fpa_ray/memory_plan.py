"""`plan`: where a config's pools go and what one learner GPU holds, before anything starts.

Model states per GPU follow DeepSpeed's own estimators (bf16 modules, no offload): ZeRO-2 holds
2 bytes of bf16 weights per parameter plus 18 / N sharded (bf16 and fp32 gradients, fp32 master
weights, Adam's two moments); ZeRO-3 holds the largest layer gathered (4 bytes per parameter of it)
plus the same 18 / N; ZeRO-1 keeps whole bf16 gradients besides (2 + 2 + 16 / N); DDP keeps fp32
weights, gradients and both moments whole (16). The reference (exact FPA, KTO, or no precomputed
sums) is bf16, sharded under ZeRO-3 (2 / N, and its largest layer gathered), else whole in every worker. Activations are an estimate for a decoder layer with
SwiGLU and fused attention, in bf16: 2 x (10 h + 4 i) bytes per token and layer kept for the backward
pass (~0.2 MB for Qwen2.5-7B's 28 layers each), or with gradient checkpointing each layer's input
(2 h) plus one layer recomputed; the logits add 2 V bytes per token for the policy (and the reference).
With LoRA the frozen base holds its weights only (fp32 under DDP, bf16 under DeepSpeed, sharded under
ZeRO-3), the adapters the model states above, and the reference nothing of its own (adapters off).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fpa_ray.config import RunConfig
from fpa_ray.grpo_layouts import grpo_layout
from fpa_ray.learner.offline_loop import needs_reference_model
from fpa_ray.objectives import get_objective
from fpa_ray.placement import held_together

GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool  # Qwen2's attention projections carry biases, Llama's do not

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """From a Hugging Face config.json of a Qwen2- or Llama-style decoder."""
        heads = config["num_attention_heads"]
        return cls(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"], heads, config.get("num_key_value_heads", heads),
                   config.get("head_dim") or config["hidden_size"] // heads, config["intermediate_size"],
                   bool(config.get("tie_word_embeddings", False)), config.get("model_type") == "qwen2")

    @property
    def parameters(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        layer = attention + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    @property
    def largest_layer(self) -> int:
        """The most parameters any one module holds itself (the embedding here): what ZeRO-3 gathers at once."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)


# config.json fields of the shipped recipes' models, for planning without the Hub (public model cards)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-Math-7B": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "tie_word_embeddings": False},
    "meta-llama/Llama-3.2-3B-Instruct": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 3072, "num_hidden_layers": 28,
                                         "num_attention_heads": 24, "num_key_value_heads": 8, "intermediate_size": 8192, "head_dim": 128,
                                         "tie_word_embeddings": True},
}


def policy_shape(config: RunConfig) -> ModelShape:
    """The policy's shape: the tiny model's settings, a local config.json, or a known Hub model's."""
    name = config.policy.name_or_path
    if name == "tiny":
        tiny = config.policy.tiny
        return ModelShape(tiny.tokenizer_vocab, tiny.hidden_size, tiny.num_layers, tiny.hidden_size // tiny.head_dim, tiny.num_kv_heads,
                          tiny.head_dim, tiny.intermediate_size, True, True)
    if (Path(name) / "config.json").is_file():
        return ModelShape.from_config(json.loads((Path(name) / "config.json").read_text()))
    if name in KNOWN_SHAPES:
        return ModelShape.from_config(KNOWN_SHAPES[name])
    from transformers import AutoConfig  # a Hub model: its config.json only

    return ModelShape.from_config(AutoConfig.from_pretrained(name).to_dict())


def model_state_bytes(parameters: int, largest_layer: int, strategy: str, zero_stage: int, workers: int) -> int:
    """Weights, gradients and optimizer state per GPU (see the module's docstring)."""
    if strategy == "ddp":
        return 16 * parameters
    sharded = int(18 * parameters / workers)
    return {1: 2 * parameters + 2 * parameters + int(16 * parameters / workers), 2: 2 * parameters + sharded,
            3: 4 * largest_layer + sharded}[zero_stage]


def lora_parameters(shape: ModelShape, lora) -> int:
    """The adapters' parameters: rank x (inputs + outputs) of each target projection of every layer
    ("all-linear": all seven; names the shape does not know are not counted)."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    sizes = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h, "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}
    names = sizes if lora.target_modules == "all-linear" else [n for n in lora.target_modules if n in sizes]
    return shape.layers * lora.rank * sum(sizes[n] for n in names)


def frozen_base_bytes(shape: ModelShape, learner) -> int:
    """LoRA's frozen base weights per GPU: fp32 under DDP (its weights are the master copy), bf16 under
    DeepSpeed, sharded under ZeRO-3 (its largest layer gathered at a time); no gradient, no optimizer state."""
    if learner.strategy == "ddp":
        return 4 * shape.parameters
    if learner.zero_stage == 3:
        return 2 * shape.largest_layer + int(2 * shape.parameters / learner.num_workers)
    return 2 * shape.parameters


def reference_bytes(shape: ModelShape, learner) -> int:
    """The frozen bf16 reference per GPU: sharded under ZeRO-3 (its largest layer gathered at a time), else whole."""
    if learner.strategy == "deepspeed" and learner.zero_stage == 3:
        return 2 * shape.largest_layer + int(2 * shape.parameters / learner.num_workers)
    return 2 * shape.parameters


def learner_memory(config: RunConfig, shape: ModelShape) -> dict[str, float]:
    """Estimated bytes on one learner GPU, by part."""
    learner, objective = config.learner, get_objective(config.objective.name)
    paired = objective.batch_type.__name__ == "PairedBatch"
    tokens = learner.micro_batch_tokens or learner.micro_batch_size * (2 if paired else 1) * learner.max_length
    layer = 2 * (10 * shape.hidden + 4 * shape.intermediate)
    # the workers' own rule; `auto` counts as online, since whether the data will carry reference sums is not known here
    reference = needs_reference_model(config.objective.name, config.fpa, precomputed=learner.reference == "precomputed")
    exact_fpa = config.fpa.enabled and config.fpa.mode == "exact"
    logits = 2 * shape.vocab * tokens * (2 if reference and (exact_fpa or objective.needs_kl_reference) else 1)
    if learner.lora is None:
        states = model_state_bytes(shape.parameters, shape.largest_layer, learner.strategy, learner.zero_stage, learner.num_workers)
    else:  # the reference is the policy with its adapters off: no weights of its own
        adapters = lora_parameters(shape, learner.lora)
        states = frozen_base_bytes(shape, learner) + model_state_bytes(adapters, 0, learner.strategy, learner.zero_stage, learner.num_workers)
        reference = False
    return {
        "model states": states,
        "reference": reference_bytes(shape, learner) if reference else 0,
        "activations, kept": shape.layers * layer * tokens,
        "activations, checkpointed": (shape.layers * 2 * shape.hidden + layer) * tokens,
        "logits": logits,
        "tokens": tokens,
    }


def describe_plan(config: RunConfig, gpu_memory_gb: float) -> tuple[str, bool]:
    """The plan as text, and whether the learner's estimate fits a GPU of `gpu_memory_gb` GiB."""
    lines = [f"# plan: {config.name}", "", "pools (held " + ("at the same time" if len(held_together(config)) == 1 else "stage by stage") + "):"]
    lines += [f"  {pool.name:<9} {pool.describe()}" for group in held_together(config) for pool in group]
    shape = policy_shape(config)
    memory = learner_memory(config, shape)
    learner = config.learner
    kept = "activations, checkpointed" if learner.gradient_checkpointing else "activations, kept"
    total = memory["model states"] + memory["reference"] + memory[kept] + memory["logits"]
    fits = learner.gpus_per_worker == 0 or total <= gpu_memory_gb * GIB
    strategy = f"DeepSpeed ZeRO-{learner.zero_stage}" if learner.strategy == "deepspeed" else "DDP"
    lines += ["", f"learner: {config.policy.name_or_path} ({shape.parameters / 1e9:.2f}B parameters), {strategy} on {learner.num_workers} "
              f"worker(s), {memory['tokens']} tokens per forward pass, gradient checkpointing {'on' if learner.gradient_checkpointing else 'off'}"]
    if learner.lora is not None:
        lines.append(f"  LoRA rank {learner.lora.rank} on {learner.lora.target_modules}: {lora_parameters(shape, learner.lora) / 1e6:.1f}M trainable "
                     "parameters; the reference is the base with the adapters off")
    lines.append("  per GPU, estimated:")
    for part in ("model states", "reference", "activations, kept", "activations, checkpointed", "logits"):
        used = "" if not part.startswith("activations") else ("  <- this run" if part == kept else "")
        lines.append(f"    {part:<26} {memory[part] / GIB:8.1f} GiB{used}")
    lines.append(f"    {'total':<26} {total / GIB:8.1f} GiB of {gpu_memory_gb:g} GiB" + ("" if fits else "  WARNING: does not fit"))
    if config.objective.name == "grpo" and grpo_layout(config.grpo).colocated:
        # The engine sleeps while the learner trains (level 1: weights and KV cache off the GPU; its CUDA
        # graphs' pool, 1-2 GiB, stays: not counted). Beside what the learner keeps between steps (model
        # states, reference) it holds, taking new weights, its own bf16 weights while the learner holds its
        # gathered bf16 copy; then, sampling, its share of the GPU.
        kept = memory["model states"] + memory["reference"]
        handing_over = kept + 2 * 2 * shape.parameters
        sampling = kept + config.sampler.gpu_memory_utilization * gpu_memory_gb * GIB
        peak = max(handing_over, sampling)
        fits = fits and (learner.gpus_per_worker == 0 or peak <= gpu_memory_gb * GIB)
        lines.append(f"  colocated engine (sampler.gpu_memory_utilization {config.sampler.gpu_memory_utilization:g}), beside the model "
                     f"states and reference: {handing_over / GIB:.1f} GiB taking the weights, {sampling / GIB:.1f} GiB sampling, of "
                     f"{gpu_memory_gb:g} GiB" + ("" if peak <= gpu_memory_gb * GIB else "  WARNING: does not fit"))
    return "\n".join(lines), fits
