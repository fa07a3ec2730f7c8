"""The training-time entanglement diagnostic against the autograd reference (objectives.gradient_entanglement)."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from fpa_ray.learner.backends import Precision
from fpa_ray.learner.data import Example, collate
from fpa_ray.learner.entanglement import entanglement_metrics, head_gradient
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.objectives import gradient_entanglement, masked_sum, token_logprobs
from fpa_ray.tiny import qwen2_config, random_qwen2

VOCAB = 64


@pytest.fixture(scope="module")
def backend():
    config = qwen2_config(VOCAB, hidden_size=64, num_layers=2, head_dim=32, num_kv_heads=1)
    config.tie_word_embeddings = False  # so autograd on the head's weight is the output projection's gradient alone
    model = random_qwen2(config, seed=0)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    return SimpleNamespace(unwrapped=model, device=torch.device("cpu"), precision=Precision(torch.float32, torch.float32),
                           gathered=lambda params=None: contextlib.nullcontext())


def _ids(generator, length):
    return tuple(torch.randint(1, VOCAB, (length,), generator=generator).tolist())


def _reference(model, chosen, rejected, kind):
    """gradient_entanglement on the full logits of one forward, g on the LM head's weight."""
    def logp(examples):
        batch, _ = collate(examples, kind, 0)
        labels, mask = shifted_targets(batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        sums = masked_sum(token_logprobs(logits, labels, mask), mask)
        return sums

    if kind == "paired":
        both = logp(chosen)
        w, lose = both[: len(chosen)], both[len(chosen):]
    else:
        w, lose = logp(chosen), logp(rejected)
    result = gradient_entanglement(w, lose, [model.get_output_embeddings().weight])
    model.zero_grad()
    return {key: float(value) for key, value in result.items()}


def test_paired_diagnostic_equals_autograd_on_the_full_logits(backend):
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(6):  # only the first 4 are measured
        prompt, shared = _ids(generator, 5), _ids(generator, 7)
        pairs.append(Example(prompt, (shared + _ids(generator, 4), shared + _ids(generator, 6))))
    got = entanglement_metrics(backend, pairs, "paired", pad_id=0)
    expected = _reference(backend.unwrapped, pairs[:4], None, "paired")
    for key in ("grad_cosine", "grad_norm_w", "grad_norm_l"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert 0 < got["grad_cosine"] < 1  # shared prefixes: aligned, not identical
    assert all(p.grad is None for p in backend.unwrapped.parameters())  # the training parameters are never touched


def test_labelled_diagnostic_uses_correct_against_incorrect_and_skips_one_sided_batches(backend):
    generator = torch.Generator().manual_seed(2)
    rows = [Example(_ids(generator, 4), (_ids(generator, 3 + i),), label=i % 3 == 0) for i in range(9)]
    got = entanglement_metrics(backend, rows, "labelled", pad_id=0)
    correct, incorrect = [r for r in rows if r.label][:4], [r for r in rows if not r.label][:4]
    expected = _reference(backend.unwrapped, correct, incorrect, "labelled")
    for key in ("grad_cosine", "grad_norm_w", "grad_norm_l"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert entanglement_metrics(backend, [r for r in rows if r.label], "labelled", pad_id=0) == {}


def test_head_gradient_is_the_same_in_any_chunking():
    generator = torch.Generator().manual_seed(3)
    hidden, targets = torch.randn(37, 16, generator=generator), torch.randint(0, 50, (37,), generator=generator)
    weight = torch.randn(50, 16, generator=generator).requires_grad_()
    whole = head_gradient(hidden, targets, weight, rows=3, chunk=1000)
    assert torch.allclose(head_gradient(hidden, targets, weight, rows=3, chunk=5), whole, atol=1e-6)
    logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).sum() / 3
    assert torch.allclose(torch.autograd.grad(logp, weight)[0], whole, atol=1e-6)


def test_whole_model_scope_equals_autograd_over_every_parameter_and_takes_any_number_of_rows(backend):
    generator = torch.Generator().manual_seed(4)
    pairs = []
    for _ in range(20):  # more rows than one block of the whole-model gradient (8)
        prompt, shared = _ids(generator, 5), _ids(generator, 7)
        pairs.append(Example(prompt, (shared + _ids(generator, 4), shared + _ids(generator, 6))))
    got = entanglement_metrics(backend, pairs, "paired", pad_id=0, rows=17, scope="all")
    model = backend.unwrapped
    batch, _ = collate(pairs[:17], "paired", 0)
    labels, mask = shifted_targets(batch)
    sums = masked_sum(token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, labels, mask), mask)
    expected = {key: float(v) for key, v in gradient_entanglement(sums[:17], sums[17:], list(model.parameters())).items()}
    head = _reference(model, pairs[:17], None, "paired")
    for key in ("grad_cosine", "grad_norm_w", "grad_norm_l"):
        assert got[f"{key}_all"] == pytest.approx(expected[key], rel=1e-4), key
        assert got[key] == pytest.approx(head[key], rel=1e-5), key  # the head's, as with scope `head`
    assert got["grad_cosine_all"] != pytest.approx(got["grad_cosine"], abs=1e-3)  # the body's shared steps count
    assert all(p.grad is None for p in model.parameters())
