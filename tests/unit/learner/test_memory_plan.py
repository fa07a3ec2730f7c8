"""`plan`'s arithmetic: parameter counts from a config.json equal the model's (and LoRA's adapters equal
PEFT's), and model states per GPU equal DeepSpeed's own estimators (ZeRO-2 and ZeRO-3, no offload) on
small Qwen2 and Llama models."""

import pytest
import torch

from fpa_ray.config import LoRAConfig, load_config
from fpa_ray.memory_plan import ModelShape, describe_plan, learner_memory, lora_parameters, model_state_bytes


def _models():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=176, tie_word_embeddings=False))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=96, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
                                         head_dim=32, intermediate_size=200, tie_word_embeddings=True))
    return [qwen, llama]


@pytest.mark.parametrize("model", _models(), ids=["qwen2-untied", "llama-tied"])
def test_model_states_per_gpu_match_deepspeeds_estimators(model):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = ModelShape.from_config(model.config.to_dict())
    total, largest = model_to_params(model)
    assert (shape.parameters, shape.largest_layer) == (total, largest)
    for gpus in (1, 8):
        assert model_state_bytes(total, largest, "deepspeed", 2, gpus) == estimate_zero2_model_states_mem_needs(total, gpus, 1, cpu_offload=False)[1]
        assert model_state_bytes(total, largest, "deepspeed", 3, gpus) == estimate_zero3_model_states_mem_needs(total, largest, gpus, 1, cpu_offload=False)[1]


def test_the_7b_recipe_fits_an_80_gib_gpu_only_with_gradient_checkpointing():
    config = load_config("qwen25-math-7b-rpo")
    text, fits = describe_plan(config, 80)
    assert fits and "7.62B parameters" in text and "DeepSpeed ZeRO-3 on 8 worker(s), 8192 tokens per forward pass" in text
    memory = learner_memory(config, ModelShape.from_config({"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                                                            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                                                            "intermediate_size": 18944}))
    assert 5.0 < memory["activations, kept"] / memory["tokens"] / 2**20 < 6.5  # ~5.6 MB per token kept for the backward pass
    assert memory["activations, checkpointed"] < memory["activations, kept"] / 10
    unchecked = load_config("qwen25-math-7b-rpo", ["learner.gradient_checkpointing=false", "learner.micro_batch_tokens=null"])
    text, fits = describe_plan(unchecked, 80)
    assert not fits and "WARNING: does not fit" in text and "16384 tokens per forward pass" in text


def test_the_reference_is_counted_sharded_under_zero3_and_whole_otherwise():
    config = load_config("qwen25-math-7b-rpo")
    shape = ModelShape.from_config({"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                                    "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944})
    sharded = learner_memory(config, shape)["reference"]
    whole = learner_memory(load_config("qwen25-math-7b-rpo", ["learner.zero_stage=2"]), shape)["reference"]
    assert whole == 2 * shape.parameters and whole / 8 < sharded < whole / 4  # 1/8 plus the largest layer gathered
    assert learner_memory(load_config("qwen25-math-7b-grpo"), shape)["reference"] == 0  # GRPO's KL is off: no reference


def test_a_colocated_engine_is_planned_beside_what_the_learner_keeps_between_steps():
    text, fits = describe_plan(load_config("qwen25-math-7b-grpo-colocated"), 80)
    # 18.0 GiB of ZeRO-3 states on 8 + 2 x 14.2 GiB of bf16 weights (the gathered copy and the engine's); + 40 GiB sampling
    assert fits and "beside the model states and reference: 46.4 GiB taking the weights, 58.0 GiB sampling, of 80 GiB" in text
    text, fits = describe_plan(load_config("qwen25-math-7b-grpo-colocated", ["sampler.gpu_memory_utilization=0.85"]), 80)
    assert not fits and "86.0 GiB sampling, of 80 GiB  WARNING: does not fit" in text  # 68 + 18 GiB of model states


@pytest.mark.parametrize("model", _models(), ids=["qwen2-untied", "llama-tied"])
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "down_proj"]])
def test_lora_parameters_are_the_adapters_peft_adds(model, targets):
    from peft import LoraConfig, get_peft_model

    lora = LoRAConfig(rank=4, target_modules=targets)
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert lora_parameters(ModelShape.from_config(model.config.to_dict()), lora) == trainable > 0
    adapted.unload()  # the shared fixture's model without its adapters again


def test_the_lora_recipe_fits_one_80_gib_gpu_with_no_reference_model():
    config = load_config("qwen25-math-7b-rpo-lora")
    shape = ModelShape.from_config({"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                                    "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944})
    memory = learner_memory(config, shape)
    adapters = lora_parameters(shape, config.learner.lora)
    assert memory["reference"] == 0 and memory["model states"] == 2 * shape.parameters + (2 + 18) * adapters  # bf16 base; ZeRO-2 on 1 GPU
    text, fits = describe_plan(config, 80)
    assert fits and "DeepSpeed ZeRO-2 on 1 worker(s)" in text and f"{adapters / 1e6:.1f}M trainable parameters" in text
    full = learner_memory(load_config("qwen25-math-7b-rpo-lora", ["learner.lora=null"]), shape)
    assert full["model states"] > 4 * memory["model states"] and full["reference"] == 2 * shape.parameters
