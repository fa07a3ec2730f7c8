import pytest
import torch

from fpa_ray.objectives import future_logprobs, future_sequence_logprobs, masked_sum, reference_and_future_logprobs, token_logprobs

B, T, V = 3, 7, 50


def _inputs(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(B, T, V, generator=g, dtype=dtype) * 3
    ref = policy + torch.randn(B, T, V, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # a prompt
    mask[2, 5:] = False  # padding
    return policy, ref, labels, mask


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0, 10.0])
def test_exact_matches_normaliser_identity(lam):
    policy, ref, labels, mask = _inputs()
    got = future_logprobs(policy, ref, labels, lam, mask)
    log_pi, log_ref = policy.log_softmax(-1), ref.log_softmax(-1)
    # log Z_t = log sum_v pi(v)^(1+lam) pi_ref(v)^(-lam)
    log_z = torch.logsumexp((1 + lam) * log_pi - lam * log_ref, dim=-1)
    pick = lambda t: t.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    expected = ((1 + lam) * pick(log_pi) - lam * pick(log_ref) - log_z) * mask
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (log_z[mask] >= -1e-9).all(), "Z_t >= 1 by Hoelder's inequality"


def test_chunked_equals_unchunked_and_masked_positions_are_zero():
    policy, ref, labels, mask = _inputs(seed=1)
    whole = future_logprobs(policy, ref, labels, 1.0, mask)
    for chunk in (1, 4, 5, 1000):
        torch.testing.assert_close(future_logprobs(policy, ref, labels, 1.0, mask, chunk_size=chunk), whole)
    assert (whole[~mask] == 0).all()
    assert (whole[mask] < 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_one_pass_reference_and_future_log_probs_equal_the_two_functions(dtype):
    policy, ref, labels, mask = _inputs(seed=4, dtype=dtype)
    for chunk in (None, 1, 4, 1000):
        ref_tokens, future_tokens = reference_and_future_logprobs(policy, ref, labels, 2.0, mask, chunk)
        torch.testing.assert_close(ref_tokens, token_logprobs(ref, labels, mask, chunk), rtol=0, atol=0)
        torch.testing.assert_close(future_tokens, future_logprobs(policy, ref, labels, 2.0, mask, chunk), rtol=0, atol=0)
    ref[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        reference_and_future_logprobs(policy, ref, labels, 2.0, mask)


def test_lambda_zero_returns_policy_logprobs():
    policy, ref, labels, mask = _inputs(seed=2)
    expected = token_logprobs(policy, labels, mask)
    for mode in ("exact", "sequence"):
        torch.testing.assert_close(future_logprobs(policy, ref, labels, 0.0, mask, mode=mode), expected)


def test_sequence_mode_drops_log_z_and_overestimates():
    policy, ref, labels, mask = _inputs(seed=3)
    lam = 1.5
    seq = future_logprobs(policy, ref, labels, lam, mask, mode="sequence", chunk_size=4)
    expected = (1 + lam) * token_logprobs(policy, labels, mask) - lam * token_logprobs(ref, labels, mask)
    torch.testing.assert_close(seq, expected)
    exact = future_logprobs(policy, ref, labels, lam, mask)
    assert (seq[mask] >= exact[mask] - 1e-6).all()
    got = future_sequence_logprobs(torch.tensor([1.0, -2.0]), torch.tensor([0.5, -1.0]), lam)
    torch.testing.assert_close(got, torch.tensor([(1 + lam) - lam * 0.5, -2 * (1 + lam) + lam]))


def test_bf16_logits_give_float32_close_to_float64():
    policy, ref, labels, mask = _inputs(seed=4)
    exact64 = future_logprobs(policy, ref, labels, 1.0, mask)
    bf16 = future_logprobs(policy.bfloat16(), ref.bfloat16(), labels, 1.0, mask, chunk_size=3)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, exact64.float(), rtol=0.05, atol=0.15)


def test_future_logprobs_carry_no_gradient_and_token_logprobs_do():
    policy, ref, labels, mask = _inputs(seed=5)
    policy.requires_grad_()
    assert not future_logprobs(policy, ref, labels, 1.0, mask).requires_grad
    lp = token_logprobs(policy, labels, mask, chunk_size=4)
    masked_sum(lp, mask).sum().backward()
    softmax = policy.detach().softmax(-1)
    onehot = torch.nn.functional.one_hot(labels, V).double()
    expected = (onehot - softmax) * mask.unsqueeze(-1)
    torch.testing.assert_close(policy.grad, expected)


def test_masked_sum_counts_only_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    torch.testing.assert_close(masked_sum(values, mask), torch.tensor([4.0, 6.0]))
