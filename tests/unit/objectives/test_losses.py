"""Loss values against hand-computed numbers, and the normalisation contract."""

import math

import pytest
import torch

from fpa_ray.objectives import (
    LabelledBatch,
    PairedBatch,
    SequenceStats,
    TokenBatch,
    get_objective,
    group_advantages,
    kto_reference_point,
)

from tests.helpers.objective_batches import FPA_OBJECTIVES, leaves, random_batch


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _pair(lw, rw, nw, ll, rl, nl):
    return PairedBatch(SequenceStats(_t(lw), _t(nw), _t(rw)), SequenceStats(_t(ll), _t(nl), _t(rl)))


def test_dpo_rpo_simper_values():
    batch = _pair(-1.0, -2.0, 4, -3.0, -1.0, 5)
    # margin = (-1 + 2) - (-3 + 1) = 3
    assert get_objective("dpo")(batch, beta=0.5).loss.item() == pytest.approx(math.log1p(math.exp(-1.5)))
    assert get_objective("rpo")(batch, beta=0.5, alpha=2.0).loss.item() == pytest.approx(math.log1p(math.exp(-1.5)) + 2.0 * 1 / 4)
    assert get_objective("simper")(batch).loss.item() == pytest.approx(-math.exp(-1 / 4) + math.exp(-3 / 5))
    metrics = get_objective("dpo")(batch, beta=0.5).metrics
    assert metrics["reward_margin"].item() == pytest.approx(3.0)
    assert metrics["reward_accuracy"].item() == 1.0
    assert metrics["C_w"].item() == pytest.approx(0.5 * _sig(-1.5))


def test_kto_offline_rl_reinforce_values():
    samples = SequenceStats(_t(-2.0, -6.0), _t(4, 3), _t(-3.0, -5.0))
    batch = LabelledBatch(samples, torch.tensor([True, False]), kl_reference=torch.tensor(0.5, dtype=torch.float64))
    # r = (1, -1), z0 = 0.5
    kto = (1.5 * (1 - _sig(0.1 * (1 - 0.5))) + 0.5 * (1 - _sig(0.1 * (0.5 + 1)))) / 2
    got = get_objective("kto")(batch, beta=0.1, desirable_weight=1.5, undesirable_weight=0.5).loss.item()
    assert got == pytest.approx(kto)
    assert get_objective("offline_rl")(batch).loss.item() == pytest.approx((-math.exp(-0.5) + math.exp(-2)) / 2)
    assert get_objective("reinforce")(batch).loss.item() == pytest.approx((2 / 4 - 6 / 3) / 2)
    assert kto_reference_point(_t(-1.0, -2.0), _t(-2.0, -2.0)).item() == pytest.approx(0.5)
    assert kto_reference_point(_t(-3.0), _t(-2.0)).item() == 0.0  # clamped at zero, as in the KTO paper


def test_grpo_clipped_value_and_token_level_normalisation():
    logp = torch.log(_t(1.5, 1.0, 0.5, 1.0)).view(2, 2).requires_grad_()  # ratio against old_logp = 0
    mask = torch.tensor([[True, True], [True, False]])
    batch = TokenBatch(logp, torch.zeros(2, 2, dtype=torch.float64), mask, _t(1.0, -1.0))
    out = get_objective("grpo")(batch, clip_eps=0.2)
    # tokens: rho=1.5,A=+1 -> -1.2 (clipped); rho=1,A=+1 -> -1; rho=0.5,A=-1 -> 0.8 (clipped); padding ignored
    assert out.loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3)
    assert out.metrics["clip_fraction"].item() == pytest.approx(2 / 3)
    (grad,) = torch.autograd.grad(out.loss, logp)
    # clipped tokens get no gradient; the unclipped one gets -A rho / 3
    torch.testing.assert_close(grad, _t(0.0, -1 / 3, 0.0, 0.0).view(2, 2))


def test_grpo_dual_clip_bounds_the_loss_of_a_negative_advantage_far_off_policy():
    # After several optimizer steps on one rollout rho can be large; with A < 0 the PPO minimum takes
    # -rho A, unbounded. The dual clip caps it at -clip_ratio_c A (verl's clip_ratio_c) with no gradient.
    logp = torch.log(_t(10.0, 2.0, 1e12)).view(1, 3).requires_grad_()  # rho = 10, 2, 1e12 (log-ratio 27.6, clamped to 20)
    batch = TokenBatch(logp, torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool), _t(-1.0))
    out = get_objective("grpo")(batch, clip_eps=0.2)
    assert out.loss.item() == pytest.approx((3.0 + 2.0 + 3.0) / 3)  # capped at 3 = clip_ratio_c; rho = 2 stays
    assert out.metrics["dual_clip_fraction"].item() == pytest.approx(2 / 3)
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, _t(0.0, 2.0 / 3, 0.0).view(1, 3))  # only the uncapped token: -A rho / 3
    unbounded = get_objective("grpo")(batch, clip_eps=0.2, clip_ratio_c=None)
    assert unbounded.loss.item() == pytest.approx((10.0 + 2.0 + math.exp(20.0)) / 3)  # finite: the log-ratio is clamped
    positive = TokenBatch(logp, batch.old_logp, batch.mask, _t(1.0))
    assert get_objective("grpo")(positive, clip_eps=0.2).loss.item() == pytest.approx(-1.2)  # A > 0: the upper clip alone
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        get_objective("grpo")(batch, clip_ratio_c=0.5)


def test_grpo_truncated_importance_weights_correct_for_a_stale_sampler():
    # pi_old / pi_sampler = 0.5, 1, 4 (capped at 2); the surrogate's own ratio is 1 (logp = old_logp).
    old = torch.log(_t(0.2, 0.3, 0.4)).view(1, 3)
    sampler = torch.log(_t(0.4, 0.3, 0.1)).view(1, 3)
    logp = old.clone().requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    batch = TokenBatch(logp, old, mask, _t(1.0), behaviour_logp=sampler, tis_cap=2.0)
    out = get_objective("grpo")(batch, clip_eps=0.2)
    assert out.loss.item() == pytest.approx(-(0.5 + 1.0 + 2.0) / 3)
    assert out.metrics["tis_weight"].item() == pytest.approx(3.5 / 3)
    assert out.metrics["tis_clip_fraction"].item() == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(out.loss, logp)
    torch.testing.assert_close(grad, -_t(0.5, 1.0, 2.0).view(1, 3) / 3)  # the weight scales the gradient and carries none
    on_policy = get_objective("grpo")(TokenBatch(logp, old, mask, _t(1.0), behaviour_logp=old, tis_cap=2.0), clip_eps=0.2)
    assert on_policy.loss.item() == pytest.approx(get_objective("grpo")(TokenBatch(logp, old, mask, _t(1.0)), clip_eps=0.2).loss.item())
    with pytest.raises(ValueError, match="importance correction needs both"):
        get_objective("grpo")(TokenBatch(logp, old, mask, _t(1.0), behaviour_logp=sampler))


def test_grpo_kl_penalty_is_k3():
    logp = torch.log(_t(0.5)).view(1, 1).requires_grad_()
    ref = torch.log(_t(0.25)).view(1, 1)
    batch = TokenBatch(logp, logp.detach().clone(), torch.ones(1, 1, dtype=torch.bool), _t(0.0), ref_logp=ref)
    out = get_objective("grpo")(batch, kl_coef=0.1)
    d = math.log(0.5)  # log(pi_ref / pi)
    assert out.loss.item() == pytest.approx(0.1 * (math.exp(d) - d - 1))
    assert out.metrics["kl"].item() == pytest.approx(math.exp(d) - d - 1)


def test_group_advantages():
    adv = group_advantages(_t(1, 0, 0, 0, 1, 1, 1, 1), group_size=4)
    std = torch.tensor([1.0, 0, 0, 0]).std().item()
    torch.testing.assert_close(adv[:4], _t(0.75, -0.25, -0.25, -0.25) / (std + 1e-6))
    torch.testing.assert_close(adv[4:], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(group_advantages(torch.tensor([1, 0]), 2, scale=False), torch.tensor([0.5, -0.5]))


def _split_labelled(batch, parts):
    out = []
    for idx in parts:
        s = batch.samples
        stats = SequenceStats(s.logp[idx], s.num_tokens[idx], s.ref_logp[idx], None if s.future_logp is None else s.future_logp[idx])
        out.append(LabelledBatch(stats, batch.correct[idx], batch.kl_reference))
    return out


def _split_paired(batch, parts):
    def take(s, idx):
        return SequenceStats(s.logp[idx], s.num_tokens[idx], s.ref_logp[idx], None if s.future_logp is None else s.future_logp[idx])

    return [PairedBatch(take(batch.chosen, idx), take(batch.rejected, idx)) for idx in parts]


@pytest.mark.parametrize("lam", [None, 1.0])
@pytest.mark.parametrize("name", FPA_OBJECTIVES)
def test_gradient_accumulation_and_workers_do_not_change_the_gradient(name, lam):
    """The pure objectives' half of the contract: given the same inputs, micro-batches sum to the full
    batch. For KTO that includes one z0 for all of them; that production estimates it once per global
    batch (not per micro-batch) is tested on the learner's own step in tests/unit/learner/test_distributed_step.py."""
    batch = random_batch(name, size=7, lam=lam)
    objective = get_objective(name)
    full = torch.autograd.grad(objective(batch).loss, leaves(batch))
    # Unequal micro-batches (as on 2 workers x 2 accumulation steps with a ragged tail).
    parts = [torch.tensor([0, 1, 2]), torch.tensor([3]), torch.tensor([4, 5]), torch.tensor([6])]
    split = _split_paired(batch, parts) if isinstance(batch, PairedBatch) else _split_labelled(batch, parts)
    total = sum(objective(micro, normalizer=7).loss for micro in split)
    accumulated = torch.autograd.grad(total, leaves(batch))
    for a, b in zip(full, accumulated):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)


def test_grpo_token_normalisation_is_invariant_to_micro_batching():
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(4, 6, generator=g, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    objective = get_objective("grpo")
    (full,) = torch.autograd.grad(objective(TokenBatch(logp, old, mask, adv)).loss, logp)
    tokens = int(mask.sum())
    total = sum(objective(TokenBatch(logp[i], old[i], mask[i], adv[i]), normalizer=tokens).loss for i in (slice(0, 1), slice(1, 4)))
    (accumulated,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(accumulated, full, rtol=1e-12, atol=1e-15)


def test_dynamic_sampling_keeps_only_groups_with_both_verdicts():
    from fpa_ray.objectives.grpo import informative_groups

    correct = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)  # 4 groups of 4
    assert informative_groups(correct, 4).tolist() == [True, False, False, True]
    # ... which are exactly the groups with a non-zero advantage somewhere.
    nonzero = group_advantages(correct.float(), 4).view(4, 4).abs().sum(1) > 0
    assert nonzero.tolist() == informative_groups(correct, 4).tolist()


def test_soft_overlong_punishment_is_dapos():
    from fpa_ray.objectives.grpo import overlong_penalty

    lengths = torch.tensor([10, 60, 70, 80, 90, 100])
    assert overlong_penalty(lengths, max_tokens=100, buffer=40).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -0.75, -1.0])
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(lengths, max_tokens=100, buffer=100)
