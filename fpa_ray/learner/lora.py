"""Low-rank adapters (PEFT's LoRA) on the learner's policy.

Only the adapters train. The reference of a run whose reference is its starting policy is that
same network with the adapters off (PEFT's `disable_adapter`, as TRL's DPO and GRPO trainers do
with a PEFT model), so no second copy of the weights is loaded: exact FPA's reference logits cost
one more forward pass, not a model. A checkpoint holds the adapter in PEFT's layout (`adapter/`: to
resume, and for `PeftModel.from_pretrained`) and, at its root, the merged weights that vLLM and
transformers load like any policy's. The merged weights are computed as W + scale * B A beside the
module, not by merging into it and back (PEFT's merge_adapter / unmerge_adapter), which would move
the base weights by a rounding at every save. In GRPO only the adapters travel to the samplers
(`adapter_weights`), which merge them into the weights they started from (fpa_ray/weights/adapters.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fpa_ray.config import LoRAConfig
from fpa_ray.weights.adapters import LORA_A, LORA_B

ADAPTER_DIR = "adapter"


def with_adapters(policy: torch.nn.Module, lora: LoRAConfig, adapter_dir: Path | None = None) -> torch.nn.Module:
    """`policy` wrapped by PEFT with fresh adapters, or with those saved in `adapter_dir` (trainable)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    # The adapters take the base weights' dtype: fp32 adapters on bf16 weights break ZeRO-3's coalesced gather.
    if adapter_dir is not None:
        return PeftModel.from_pretrained(policy, adapter_dir, is_trainable=True, autocast_adapter_dtype=False)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(policy, config, autocast_adapter_dtype=False)


class AdaptersOff:
    """The frozen reference as the policy with its adapters disabled, called like a model (no gradient)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), self.model.disable_adapter():
            return self.model(*args, **kwargs)


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under its own names, each adapted linear layer's as W + its adapter's delta."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {f"{name}.base_layer.weight": module.get_delta_weight(model.active_adapter)
              for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    merged = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = (value + deltas[key].to(value.dtype)) if key in deltas else value
    return merged


def save_merged(model: torch.nn.Module, directory: Path) -> None:
    """The merged policy at `directory` (config and weights, as save_pretrained writes them) and the adapter in `adapter/`."""
    model.get_base_model().save_pretrained(directory, state_dict=merged_state_dict(model))
    model.save_pretrained(directory / ADAPTER_DIR)


def adapter_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The adapters alone, as the samplers merge them: `<module>.lora_A` and `<module>.lora_B` of each
    adapted linear layer, named by the layer's path in the base model (its checkpoint's names)."""
    from peft.tuners.lora import Linear, LoraLayer

    adapter, named = model.active_adapter, []
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        # PEFT's LoRA on a plain linear layer (not a convolution, an embedding or GPT-2's transposed Conv1D)
        if not isinstance(module, Linear) or adapter not in module.lora_A or module.fan_in_fan_out:
            raise ValueError(f"learner.lora.target_modules: {name} ({type(module.get_base_layer()).__name__}) is not a linear layer "
                             "the samplers can merge an adapter into; target linear layers only")
        named += [(f"{name}.{LORA_A}", module.lora_A[adapter].weight), (f"{name}.{LORA_B}", module.lora_B[adapter].weight)]
    return named
