"""The FPA rule (docs/method.md section 4) against autograd and against the hand-derived coefficients."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fpa_ray.objectives import (
    PairedBatch,
    SequenceStats,
    future_logprobs,
    future_sequence_logprobs,
    get_objective,
    masked_sum,
    token_logprobs,
)

from tests.helpers.objective_batches import FPA_OBJECTIVES, LABELLED, PAIRED, leaves, random_batch

PARAMS = {"dpo": {"beta": 0.5}, "rpo": {"beta": 0.5, "alpha": 0.7}, "kto": {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.8}}


def _grads(batch, name, **kwargs):
    out = get_objective(name)(batch, **PARAMS.get(name, {}), **kwargs)
    return out, torch.autograd.grad(out.loss, leaves(batch))


@pytest.mark.parametrize("name", FPA_OBJECTIVES)
def test_lambda_zero_surrogate_gradient_equals_plain_gradient(name):
    plain_out, plain = _grads(random_batch(name, lam=None), name)
    fpa_out, fpa = _grads(random_batch(name, lam=0.0), name)
    for g_plain, g_fpa in zip(plain, fpa):
        torch.testing.assert_close(g_fpa, g_plain, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fpa_out.loss, plain_out.loss.detach())


@pytest.mark.parametrize("name", FPA_OBJECTIVES)
def test_fpa_loss_value_is_the_plain_loss_and_gradient_changes(name):
    plain_out, plain = _grads(random_batch(name, lam=None), name)
    fpa_out, fpa = _grads(random_batch(name, lam=1.0), name)
    torch.testing.assert_close(fpa_out.loss, plain_out.loss.detach())
    changed = any(not torch.allclose(a, b) for a, b in zip(plain, fpa))
    assert changed == (name != "reinforce"), "FPA must act on every objective except plain REINFORCE"


# Hand-derived coefficients of docs/method.md section 5, evaluated at the future point (l -> l_hat).
def _paired_coefficients(name, batch):
    w, l = batch.chosen, batch.rejected
    lw, ll = w.future_logp, l.future_logp
    if name in ("dpo", "rpo"):
        beta = PARAMS[name]["beta"]
        c = beta * torch.sigmoid(beta * ((ll - l.ref_logp) - (lw - w.ref_logp)))
        c_w = c + (PARAMS["rpo"]["alpha"] / w.num_tokens if name == "rpo" else 0)
        return c_w, c
    return torch.exp(lw / w.num_tokens) / w.num_tokens, torch.exp(ll / l.num_tokens) / l.num_tokens


def _labelled_slope(name, batch):
    """dL/dl per sample at the future point; negative for samples pushed up."""
    s = batch.samples
    a = torch.where(batch.correct, 1.0, -1.0).double()
    if name == "reinforce":
        return -a / s.num_tokens
    if name == "offline_rl":
        return -a * torch.exp(s.future_logp / s.num_tokens) / s.num_tokens
    p = PARAMS["kto"]
    r_hat, z0, beta = s.future_logp - s.ref_logp, batch.kl_reference, p["beta"]
    sig_d = torch.sigmoid(beta * (r_hat - z0))
    sig_u = torch.sigmoid(beta * (z0 - r_hat))
    return torch.where(batch.correct, -p["desirable_weight"] * beta * sig_d * (1 - sig_d), p["undesirable_weight"] * beta * sig_u * (1 - sig_u))


@pytest.mark.parametrize("lam", [0.5, 2.0])
@pytest.mark.parametrize("name", PAIRED)
def test_paired_gradient_matches_hand_coefficients(name, lam):
    batch = random_batch(name, lam=lam)
    out, (g_w, g_l) = _grads(batch, name)
    c_w, c_l = _paired_coefficients(name, batch)
    n = batch.chosen.logp.shape[0]
    torch.testing.assert_close(g_w, -c_w / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_l, c_l / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out.metrics["C_w"], c_w.mean())
    torch.testing.assert_close(out.metrics["C_l"], c_l.mean())


@pytest.mark.parametrize("lam", [0.5, 2.0])
@pytest.mark.parametrize("name", LABELLED)
def test_labelled_gradient_matches_hand_coefficients(name, lam):
    batch = random_batch(name, lam=lam)
    _, (g,) = _grads(batch, name)
    torch.testing.assert_close(g, _labelled_slope(name, batch) / batch.samples.logp.shape[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("apply_to", ["rejected", "chosen"])
def test_targeted_fpa_moves_only_the_targeted_coefficient_dpo(apply_to):
    batch, plain_batch = random_batch("dpo", lam=1.0), random_batch("dpo", lam=None)
    out, (g_w, g_l) = _grads(batch, "dpo", apply_to=apply_to)
    _, (p_w, p_l) = _grads(plain_batch, "dpo")
    c_w_hat, c_l_hat = _paired_coefficients("dpo", batch)
    n = g_w.shape[0]
    if apply_to == "rejected":
        torch.testing.assert_close(g_w, p_w)
        torch.testing.assert_close(g_l, c_l_hat / n)
    else:
        torch.testing.assert_close(g_w, -c_w_hat / n)
        torch.testing.assert_close(g_l, p_l)
    assert {"C_w_current", "C_l_current", "future_logp_chosen"} <= out.metrics.keys()


@pytest.mark.parametrize("apply_to", ["rejected", "chosen"])
def test_targeted_fpa_on_labelled_samples_follows_the_label(apply_to):
    batch, plain_batch = random_batch("offline_rl", lam=1.0), random_batch("offline_rl", lam=None)
    _, (g,) = _grads(batch, "offline_rl", apply_to=apply_to)
    _, (plain,) = _grads(plain_batch, "offline_rl")
    future = _labelled_slope("offline_rl", batch) / g.shape[0]
    targeted = batch.correct if apply_to == "chosen" else ~batch.correct
    torch.testing.assert_close(g[targeted], future[targeted])
    torch.testing.assert_close(g[~targeted], plain[~targeted])


def test_fpa_lowers_the_rejected_coefficient_when_the_policy_moved_down():
    """The paper's mechanism: once l_l fell below the reference, pi_hat extrapolates further and C_l brakes earlier."""
    n = torch.ones(4, dtype=torch.float64)
    ref = torch.full((4,), -10.0, dtype=torch.float64)
    chosen = SequenceStats(torch.full((4,), -9.0, dtype=torch.float64, requires_grad=True), n * 10, ref, None)
    rejected = SequenceStats(torch.full((4,), -14.0, dtype=torch.float64, requires_grad=True), n * 10, ref, None)
    plain = get_objective("dpo")(PairedBatch(chosen, rejected), beta=0.5).metrics

    def future(stats, lam=1.0):
        return SequenceStats(stats.logp, stats.num_tokens, stats.ref_logp, (1 + lam) * stats.logp.detach() - lam * ref)

    fpa = get_objective("dpo")(PairedBatch(future(chosen), future(rejected)), beta=0.5).metrics
    assert fpa["C_l"] < plain["C_l"]
    torch.testing.assert_close(fpa["C_l_current"], plain["C_l"])


def test_end_to_end_from_logits_lambda_zero_equals_plain_dpo():
    """Token log-probs -> sums -> exact future log-probs -> DPO: the gradient on the logits is DPO's at lam = 0."""
    g = torch.Generator().manual_seed(7)
    shape = (4, 6, 30)
    mask = torch.ones(shape[:2], dtype=torch.bool)
    mask[:, :2] = False
    labels = torch.randint(0, 30, shape[:2], generator=g)
    ref_logits = torch.randn(shape, generator=g, dtype=torch.float64)
    base = torch.randn(shape, generator=g, dtype=torch.float64)

    def grad_on_logits(lam):
        logits = base.clone().requires_grad_()
        lp = masked_sum(token_logprobs(logits, labels, mask), mask)
        ref = masked_sum(token_logprobs(ref_logits, labels, mask), mask)
        fut = None if lam is None else masked_sum(future_logprobs(logits, ref_logits, labels, lam, mask), mask)
        count = mask.sum(1).double()
        side = lambda i: SequenceStats(lp[i::2], count[i::2], ref[i::2], None if fut is None else fut[i::2])  # noqa: E731
        loss = get_objective("dpo")(PairedBatch(side(0), side(1)), beta=0.3).loss
        (grad,) = torch.autograd.grad(loss, logits)
        return grad, loss

    plain, plain_loss = grad_on_logits(None)
    zero, zero_loss = grad_on_logits(0.0)
    torch.testing.assert_close(zero, plain, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(zero_loss.detach(), plain_loss.detach())
    assert not torch.allclose(grad_on_logits(2.0)[0], plain)


def test_dpo_future_equals_weaker_kl_regularised_reward_in_sequence_mode():
    """docs/method.md section 4: in sequence mode l_hat - l_ref = (1+lam)(l - l_ref), so FPA-DPO's gradient is
    DPO's with the margin inside the sigmoid scaled by 1 + lam (the KL-regularised optimum at beta / (1 + lam)).
    The future log-probs come from the production function, the gradient from the production objective."""
    lam, beta = 1.5, 0.5
    plain = random_batch("dpo", lam=None)
    batch = PairedBatch(*(dataclasses.replace(s, future_logp=future_sequence_logprobs(s.logp, s.ref_logp, lam)) for s in (plain.chosen, plain.rejected)))
    out = get_objective("dpo")(batch, beta=beta)
    g_w, g_l = torch.autograd.grad(out.loss, leaves(batch))
    margin = ((batch.chosen.logp - batch.chosen.ref_logp) - (batch.rejected.logp - batch.rejected.ref_logp)).detach()
    c = beta * F.sigmoid(-beta * (1 + lam) * margin)
    n = margin.shape[0]
    torch.testing.assert_close(g_w, -c / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_l, c / n, rtol=1e-10, atol=1e-14)
    plain_out = get_objective("dpo")(plain, beta=beta)
    assert not torch.allclose(torch.autograd.grad(plain_out.loss, leaves(plain))[0], g_w)  # FPA changed it
