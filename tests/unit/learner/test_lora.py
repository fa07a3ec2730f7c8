"""LoRA on the learner's own backend (one process, no Ray): the step PEFT takes is the step computed by hand
on W + (alpha / r) B A, the reference is the base model exactly with no weights of its own, and a
checkpoint's merged policy and adapter give back what was trained. The Ray Train path runs these
same functions (offline_loop -> build_backend -> train_step)."""

import pytest
import torch
from torch.func import functional_call
from transformers import AutoModelForCausalLM

from fpa_ray.config import FPAConfig, LearnerConfig, LoRAConfig, load_config
from fpa_ray.learner.backends import build_backend, load_policy
from fpa_ray.learner.data import collate
from fpa_ray.learner.lora import ADAPTER_DIR, AdaptersOff, adapter_weights, merged_state_dict, with_adapters
from fpa_ray.learner.optimizer_step import objective_loss
from fpa_ray.learner.worker_records import SentWeights, save_hf
from fpa_ray.objectives import get_objective
from tests.helpers.distributed_learner import examples, save_random_policy

RANK, ALPHA = 4, 8.0
TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_random_policy(tmp_path_factory.mktemp("base"))


def _learner(**extra) -> LearnerConfig:
    return LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=8, lr=1e-3, precision="fp32",
                         lora=LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS, **extra))


def _backend(base_dir):
    torch.manual_seed(0)
    backend = build_backend(_learner(), str(base_dir), None, 4, torch.device("cpu"))
    with torch.no_grad():  # PEFT starts B at zero (A gets no gradient then): give both a value
        for name, p in backend.unwrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return backend


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def test_a_lora_fpa_rpo_step_is_the_step_on_the_merged_weights(base_dir):
    backend = _backend(base_dir)
    objective, params, fpa = get_objective("rpo"), {"beta": 0.1, "alpha": 1.0}, FPAConfig(enabled=True, lam=2.0, mode="exact")
    batch, _ = collate(examples("paired"), "paired", 0)
    reference = backend.frozen_reference(str(base_dir))
    out = objective_loss(objective, params, backend.model, reference, batch, fpa, normalizer=8.0)
    out.loss.backward()
    peft_grads = {n: p.grad.clone() for n, p in _adapters(backend.unwrapped).items()}
    assert peft_grads and all(g.abs().sum() > 0 for g in peft_grads.values())  # A and B both learn

    # By hand: the base model's own weights replaced by W + (alpha / r) B A, with A and B as leaves.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in _adapters(backend.unwrapped).items()}
    weights = dict(base.named_parameters())

    class Merged(torch.nn.Module):
        def forward(self, **inputs):
            merged = dict(weights)
            for name in [n for n in leaves if ".lora_A." in n]:
                module = name.removeprefix("base_model.model.").split(".lora_A.")[0]
                b = leaves[name.replace(".lora_A.", ".lora_B.")]
                merged[f"{module}.weight"] = weights[f"{module}.weight"] + (ALPHA / RANK) * b @ leaves[name]
            return functional_call(base, merged, args=(), kwargs=inputs)

    by_hand = objective_loss(objective, params, Merged(), base, batch, fpa, normalizer=8.0)
    by_hand.loss.backward()
    assert out.loss.item() == pytest.approx(by_hand.loss.item(), rel=1e-5)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(grad, leaves[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    assert len(leaves) == 2 * len(TARGETS) * base.config.num_hidden_layers  # every target module of every layer


def test_the_reference_is_the_base_model_with_no_weights_of_its_own(base_dir):
    backend = _backend(base_dir)
    reference = backend.frozen_reference(str(base_dir))
    assert isinstance(reference, AdaptersOff) and reference.model is backend.unwrapped
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    numel = sum(p.numel() for p in base.parameters())
    adapters = sum(p.numel() for p in _adapters(backend.unwrapped).values())
    assert sum(p.numel() for p in backend.unwrapped.parameters()) == numel + adapters  # one copy of the base in the worker
    assert sum(p.numel() for p in backend.unwrapped.parameters() if p.requires_grad) == adapters  # only the adapters train
    batch, _ = collate(examples("paired"), "paired", 0)
    with torch.no_grad():
        expected = base(**batch.model_inputs()).logits
        adapted = backend.unwrapped(**batch.model_inputs()).logits
    assert torch.equal(reference(**batch.model_inputs()).logits, expected)  # adapters off: the base, bit for bit
    assert not torch.allclose(adapted, expected)  # and on, another policy
    assert reference(**batch.model_inputs()).logits.grad_fn is None


def test_a_reference_other_than_the_starting_policy_is_loaded_as_before(base_dir, tmp_path):
    import shutil

    other_dir = shutil.copytree(base_dir, tmp_path / "other")
    reference = _backend(base_dir).frozen_reference(str(other_dir))
    assert not isinstance(reference, AdaptersOff) and not any(p.requires_grad for p in reference.parameters())


def test_a_checkpoint_holds_the_merged_policy_and_the_adapter_to_resume_from(base_dir, tmp_path):
    backend = _backend(base_dir)
    save_hf(tmp_path, backend, str(base_dir))
    assert (tmp_path / ADAPTER_DIR / "adapter_config.json").exists() and (tmp_path / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)  # what vLLM and the evaluation load
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    batch, _ = collate(examples("labelled"), "labelled", 0)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch.model_inputs()).logits, backend.unwrapped(**batch.model_inputs()).logits,
                                   rtol=1e-5, atol=1e-5)
    restored = load_policy(str(base_dir), _learner(), backend.precision, torch.device("cpu"), restore_dir=tmp_path)
    trained = _adapters(backend.unwrapped)
    for name, p in _adapters(restored).items():
        assert torch.equal(p, trained[name]) and p.requires_grad, name
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    held = {n.replace(".base_layer.", "."): p for n, p in backend.unwrapped.get_base_model().named_parameters() if "lora_" not in n}
    assert held.keys() == dict(base.named_parameters()).keys()
    for name, p in base.named_parameters():  # saving merged nothing into the trained module's base weights
        assert torch.equal(held[name], p), name


class RecordingEngine:
    """Stands in for a sampler engine (which needs a tokenizer this random policy lacks): keeps what it loads."""

    def update_weights(self, weights, merge=None) -> None:
        from fpa_ray.weights.adapters import merge_with

        self.weights = dict(merge_with(merge, weights))


def test_grpo_sends_only_the_adapters_and_the_samplers_merge_them_into_what_a_checkpoint_holds(base_dir, tmp_path):
    from fpa_ray.weights.adapters import AdapterMerge
    from fpa_ray.weights.transports import Disk, nbytes

    assert load_config("tiny-cpu-grpo", ["learner.lora={rank: 8}"]).learner.lora.rank == 8
    backend = _backend(base_dir)
    sent = SentWeights(backend, str(base_dir))
    with sent.gathered():
        named = sent.named()
    layers = backend.unwrapped.config.num_hidden_layers
    assert sorted(n for n, _ in named) == sorted(f"model.layers.{i}.{block}.{t}.lora_{ab}" for i in range(layers) for t in TARGETS
                                                 for block in (["self_attn"] if t.endswith("_proj") and t[0] in "qkvo" else ["mlp"]) for ab in "AB")
    full = nbytes(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).state_dict().values())
    assert nbytes(t for _, t in named) == sum(p.numel() for p in _adapters(backend.unwrapped).values()) * 4 < full / 10

    merge = AdapterMerge(str(base_dir), ALPHA / RANK)
    merged, expected = dict(merge(named)), merged_state_dict(backend.unwrapped)  # expected: a checkpoint's merged weights
    assert backend.unwrapped.config.tie_word_embeddings  # so the checkpoint, and the sync, hold no lm_head.weight
    assert merged.keys() == expected.keys() - {"lm_head.weight"}  # the whole model: no layer of the engine is left half-loaded
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    adapted = {n.removesuffix(".lora_A") + ".weight" for n, _ in named if n.endswith("lora_A")}
    base = dict(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).state_dict())
    assert all(not torch.equal(merged[n], base[n]) for n in adapted) and all(torch.equal(merged[n], base[n]) for n in merged.keys() - adapted)

    # The disk transport writes the adapters alone, and its receiving end merges them before loading.
    (tmp_path / "sync").mkdir()
    sent.save(tmp_path / "sync")
    assert [p.name for p in (tmp_path / "sync").iterdir()] == ["adapters.safetensors"]
    engine = RecordingEngine()
    assert Disk.receive(engine, str(tmp_path / "sync"), None, 1e-3, merge) is None
    assert engine.weights.keys() == merged.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(engine.weights[name], tensor, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match=r"without their pair.*q_proj"):
        list(merge(named[1:]))


def test_an_adapter_the_samplers_cannot_merge_is_refused_naming_the_layer(base_dir):
    policy = with_adapters(AutoModelForCausalLM.from_pretrained(base_dir), LoRAConfig(rank=RANK, target_modules=["embed_tokens", "q_proj"]))
    with pytest.raises(ValueError, match=r"learner.lora.target_modules: model.embed_tokens \(Embedding\) is not a linear layer"):
        adapter_weights(policy)


def test_a_run_resumed_from_a_lora_checkpoint_takes_the_uninterrupted_runs_steps(base_dir, tmp_path):
    from types import SimpleNamespace

    from fpa_ray.learner.data import MicroBatching, global_order
    from fpa_ray.learner.optimizer_step import train_step
    from fpa_ray.learner.worker_records import save_checkpoint

    rows, fpa, objective = examples("paired"), FPAConfig(enabled=True, lam=2.0), get_objective("rpo")

    def steps(backend, first, last):
        reference = backend.frozen_reference(str(base_dir))
        return [train_step(backend, objective, {"beta": 0.1, "alpha": 1.0}, reference, rows, global_order(len(rows), step, 8, 0), "paired", 0,
                           fpa, MicroBatching(8), 512, False)["loss"] for step in range(first, last)]

    torch.manual_seed(0)
    clean = build_backend(_learner(), str(base_dir), None, 4, torch.device("cpu"))
    clean_losses = steps(clean, 0, 4)
    torch.manual_seed(0)
    first = build_backend(_learner(), str(base_dir), None, 4, torch.device("cpu"))
    losses = steps(first, 0, 2)
    save_checkpoint(tmp_path, first, 2, SimpleNamespace(policy_path=str(base_dir), seed=0))
    resumed = build_backend(_learner(), str(base_dir), tmp_path, 4, torch.device("cpu"))
    assert resumed.start_step == 2
    losses += steps(resumed, 2, 4)
    assert losses == pytest.approx(clean_losses, rel=1e-6) and clean_losses[-1] < clean_losses[0]
    trained = _adapters(clean.unwrapped)
    for name, p in _adapters(resumed.unwrapped).items():
        torch.testing.assert_close(p, trained[name], rtol=0, atol=1e-7, msg=name)
