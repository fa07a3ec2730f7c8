import pytest
import torch

from fpa_ray.objectives import gradient_entanglement


def test_cosine_and_norms_match_manual_computation_and_keep_the_graph():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(4, 6, bias=False).double()
    features = torch.randn(5, 4, generator=g, dtype=torch.float64)
    logprobs = head(features).log_softmax(-1)
    chosen, rejected = logprobs[:, 0], logprobs[:, 1]
    got = gradient_entanglement(chosen, rejected, [head.weight])
    g_w = torch.autograd.grad(chosen.mean(), head.weight, retain_graph=True)[0].flatten()
    g_l = torch.autograd.grad(rejected.mean(), head.weight, retain_graph=True)[0].flatten()
    torch.testing.assert_close(got["grad_cosine"], torch.nn.functional.cosine_similarity(g_w, g_l, dim=0).float())
    torch.testing.assert_close(got["grad_norm_w"], g_w.norm().float())
    (chosen.sum() - rejected.sum()).backward()  # the graph survived
    assert head.weight.grad is not None


def test_shared_tokens_entangle_gradients():
    """Two responses that share most tokens have strongly aligned gradients (the paper's premise)."""
    emb = torch.nn.Embedding(10, 8).double()
    head = torch.nn.Linear(8, 10, bias=False).double()

    def logp(tokens):
        states = emb(torch.tensor(tokens[:-1]))
        return head(states).log_softmax(-1).gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).sum().unsqueeze(0)

    shared = gradient_entanglement(logp([1, 2, 3, 4, 5, 6]), logp([1, 2, 3, 4, 5, 7]), [head.weight])
    disjoint = gradient_entanglement(logp([1, 2, 3, 4, 5, 6]), logp([8, 9, 0, 8, 9, 0]), [head.weight])
    assert shared["grad_cosine"] > 0.5
    assert shared["grad_cosine"] > disjoint["grad_cosine"]


def test_needs_parameters_and_a_graph():
    with pytest.raises(ValueError, match="params is empty"):
        gradient_entanglement(torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True), [])
    with pytest.raises(ValueError, match="must carry a gradient graph"):
        gradient_entanglement(torch.zeros(1), torch.zeros(1), [torch.zeros(1, requires_grad=True)])
