"""The learner path on a small random Qwen2: logits -> statistics -> objective -> parameter gradients."""

import copy

import pytest
import torch

from fpa_ray.config import FPAConfig
from fpa_ray.demo import fpa_objectives, run_demo, synthetic_pairs
from fpa_ray.learner.forward import TokenizedBatch, forward_stats, objective_batch, shifted_targets
from fpa_ray.learner.optimizer_step import objective_loss
from fpa_ray.objectives import get_objective
from fpa_ray.tiny import qwen2_config, random_qwen2


@pytest.fixture(scope="module")
def models():
    config = qwen2_config(vocab_size=97, hidden_size=64, num_layers=2, num_kv_heads=1)
    reference = random_qwen2(config, seed=1).double().eval()
    policy = random_qwen2(config, seed=2).double()
    return policy, reference


@pytest.fixture(scope="module")
def batch():
    pairs = synthetic_pairs(97, pairs=3, prompt_len=4, shared_len=5, suffix_len=3, seed=0)
    # Pad the last rejected row on the right to exercise padding.
    ids, attention, response = pairs.input_ids.clone(), pairs.attention_mask.clone(), pairs.response_mask.clone()
    attention[-1, -2:], response[-1, -2:], ids[-1, -2:] = 0, False, 0
    return TokenizedBatch(ids, attention, response, pairs.correct)


def test_stats_equal_a_direct_log_softmax(models, batch):
    policy, reference = models
    stats = forward_stats(get_objective("dpo"), policy, reference, batch, FPAConfig(enabled=True, lam=0.5, chunk_size=5))
    logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp = logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    expected = (logp * batch.response_mask[:, 1:]).sum(-1)
    torch.testing.assert_close(stats.logp, expected)
    torch.testing.assert_close(stats.num_tokens, batch.response_mask[:, 1:].sum(-1))
    ref_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    future = (1.5 * logits - 0.5 * ref_logits).log_softmax(-1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(stats.future_logp, (future * batch.response_mask[:, 1:]).sum(-1).detach())


def test_shifted_targets_align_with_next_token(batch):
    labels, mask = shifted_targets(batch)
    assert torch.equal(labels[:, :-1], batch.input_ids[:, 1:])
    assert not mask[:, -1].any()
    assert torch.equal(mask[:, :-1], batch.response_mask[:, 1:])


@pytest.mark.parametrize("name", fpa_objectives())
def test_fpa_lambda_zero_gives_the_plain_parameter_gradient(models, batch, name):
    policy, reference = models

    def grads(fpa):
        model = copy.deepcopy(policy)
        z0 = torch.tensor(0.3, dtype=torch.float64) if get_objective(name).needs_kl_reference else None
        objective_loss(get_objective(name), {}, model, reference, batch, fpa, kl_reference=z0).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads(FPAConfig(enabled=False))
    zero = grads(FPAConfig(enabled=True, lam=0.0, chunk_size=4))
    two = grads(FPAConfig(enabled=True, lam=2.0))
    for a, b in zip(plain, zero):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, two)) == (name != "reinforce")


def test_layout_errors(models, batch):
    policy, reference = models
    odd = TokenizedBatch(batch.input_ids[:5], batch.attention_mask[:5], batch.response_mask[:5])
    with pytest.raises(ValueError, match="even number of rows"):
        objective_loss(get_objective("dpo"), {}, policy, reference, odd, FPAConfig())
    stats = forward_stats(get_objective("offline_rl"), policy, None, batch, FPAConfig())
    with pytest.raises(ValueError, match="needs the `correct` label"):
        objective_batch(get_objective("offline_rl"), stats, None)
    with pytest.raises(ValueError, match="with FPA needs a reference model"):
        forward_stats(get_objective("simper"), policy, None, batch, FPAConfig(enabled=True))
    with pytest.raises(ValueError, match=r"needs kl_reference \(z0\) estimated over the global batch"):
        objective_loss(get_objective("kto"), {}, policy, reference, batch, FPAConfig())
    with pytest.raises(ValueError, match="response_mask must be bool"):
        TokenizedBatch(batch.input_ids, batch.attention_mask, batch.response_mask.long())


def test_demo_trains_every_objective_and_fpa_is_a_no_op_only_for_reinforce():
    rows = {(r["objective"], r["fpa"]): r for r in run_demo(steps=3)}
    assert {name for name, _ in rows} == set(fpa_objectives())
    for name in fpa_objectives():
        plain, fpa = rows[name, "off"], rows[name, "lam=1.0"]
        same = plain["d_logp_chosen"] == fpa["d_logp_chosen"] and plain["C_l"] == fpa["C_l"]
        assert same == (name == "reinforce"), name
