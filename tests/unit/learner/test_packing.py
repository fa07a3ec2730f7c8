"""Padding-free micro-batches: several sequences per row, positions restarting per sequence.

1. Packed and padded give the same loss and the same gradient for every offline objective, with and
   without FPA (exact and sequence mode), on sequences whose lengths differ (so the padded batch is
   mostly padding in some rows and a shift, mask or boundary bug would show).
2. GRPO's per-token loss likewise: packed rows take each token's advantage, old and reference
   log-probs from its own sequence, and give the padded loss, metrics and gradient; every log-prob is
   of the sampler's tempered distribution.
3. The token budget: micro-batches stay within both limits, in order, and a worker cut into fewer
   micro-batches than another is cut further to the same count (ZeRO-2/3 hold collectives per backward).
"""

import pytest
import torch

from fpa_ray.config import FPAConfig, LearnerConfig
from fpa_ray.learner.data import Example, MicroBatching, collate, pack_rows, split_to
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.learner.backends import Precision
from fpa_ray.learner.offline_loop import example_kind
from fpa_ray.learner.grpo_loop import _token_logps, grpo_loss
from fpa_ray.learner.optimizer_step import objective_loss
from fpa_ray.objectives import get_objective
from fpa_ray.tiny import qwen2_config, random_qwen2

VOCAB = 97
OBJECTIVES = ["dpo", "rpo", "simper", "kto", "offline_rl", "reinforce"]
FPA = {"plain": FPAConfig(enabled=False), "exact": FPAConfig(enabled=True, lam=1.0, chunk_size=7),
       "sequence": FPAConfig(enabled=True, lam=2.0, mode="sequence")}


@pytest.fixture(scope="module")
def models():
    config = qwen2_config(VOCAB, hidden_size=64, num_layers=2, num_kv_heads=1)
    policy, reference = random_qwen2(config, seed=1), random_qwen2(config, seed=2).eval().requires_grad_(False)
    return policy, reference


def _rows(kind: str, count: int = 6) -> list[Example]:
    generator = torch.Generator().manual_seed(3)
    ids = lambda n: tuple(torch.randint(1, VOCAB, (n,), generator=generator).tolist())  # noqa: E731
    rows = []
    for i in range(count):
        prompt = ids(3 + 4 * i % 9)  # lengths from 3 to 11 and responses from 1 to 25: rows of very unequal size
        if kind == "paired":
            rows.append(Example(prompt, (ids(1 + 5 * i % 25), ids(2 + 7 * i % 23))))
        else:
            rows.append(Example(prompt, (ids(1 + 5 * i % 25),), label=i % 2 == 0))
    return rows


def _loss_and_grad(models, objective: str, fpa: FPAConfig, packed: bool):
    policy, reference = models
    kind = example_kind(objective)
    batch, _ = collate(_rows(kind), kind, pad_id=0, packed=packed)
    policy.zero_grad(set_to_none=True)
    kl = torch.tensor(0.3) if get_objective(objective).needs_kl_reference else None
    out = objective_loss(get_objective(objective), {}, policy, reference, batch, fpa, normalizer=6.0, kl_reference=kl)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in policy.named_parameters()}


# REINFORCE has constant coefficients: FPA does not apply to it (the config refuses the pair).
CASES = [(objective, fpa) for objective in OBJECTIVES for fpa in FPA if objective != "reinforce" or fpa == "plain"]


@pytest.mark.parametrize("objective,fpa", CASES)
def test_packed_and_padded_give_the_same_loss_and_gradient(models, objective, fpa):
    padded, padded_grad = _loss_and_grad(models, objective, FPA[fpa], packed=False)
    packed, packed_grad = _loss_and_grad(models, objective, FPA[fpa], packed=True)
    # REINFORCE's loss (2e-3 here) is a difference of terms +-l/N of ~10: fp32 resolves it to ~1e-6, and the
    # padded and packed sums add in another order (1.6e-7 apart on this machine's CPU, at every commit).
    assert packed.loss.item() == pytest.approx(padded.loss.item(), rel=1e-5, abs=1e-6)
    for key in ("C_w", "C_l", "logp_chosen", "logp_rejected"):
        if key in padded.metrics:
            assert float(packed.metrics[key]) == pytest.approx(float(padded.metrics[key]), rel=1e-5, abs=1e-7), key
    scale = max(g.abs().max() for g in padded_grad.values())
    assert scale > 0
    for name, grad in padded_grad.items():
        assert torch.allclose(packed_grad[name], grad, rtol=1e-4, atol=1e-6 * scale), name


FP32 = Precision(torch.float32, torch.float32)


def _grpo_loss_and_grad(models, packed: bool):
    policy, reference = models
    rows = _rows("labelled")
    batching = MicroBatching(4, tokens=40, packed=packed)  # 2+ forward passes for the log-probs, packed or not
    old = _token_logps(reference, rows, batching, 0, torch.device("cpu"), FP32)  # another policy: ratios != 1, clipping on
    ref = _token_logps(policy, rows, batching, 0, torch.device("cpu"), FP32)
    ref = [r + 0.05 * torch.arange(len(r)) for r in ref]  # and a reference apart from both
    advantages = torch.tensor([1.5, -0.7, 0.3, -2.0, 0.9, -0.1])
    batch, _ = collate(rows, "labelled", pad_id=0, packed=packed)
    policy.zero_grad(set_to_none=True)
    out, mask = grpo_loss(get_objective("grpo"), {"clip_eps": 0.1, "kl_coef": 0.1}, policy, batch, advantages, 50.0, old, ref)
    out.loss.backward()
    return out, old, {name: p.grad.clone() for name, p in policy.named_parameters()}


def test_grpo_packed_and_padded_give_the_same_loss_metrics_and_gradient(models):
    padded, padded_old, padded_grad = _grpo_loss_and_grad(models, packed=False)
    packed, packed_old, packed_grad = _grpo_loss_and_grad(models, packed=True)
    assert [len(v) for v in packed_old] == [len(e.responses[0]) for e in _rows("labelled")]  # each row's own tokens, in order
    for a, b in zip(packed_old, padded_old):
        assert torch.allclose(a, b, atol=1e-5)
    # REINFORCE's loss (2e-3 here) is a difference of terms +-l/N of ~10: fp32 resolves it to ~1e-6, and the
    # padded and packed sums add in another order (1.6e-7 apart on this machine's CPU, at every commit).
    assert packed.loss.item() == pytest.approx(padded.loss.item(), rel=1e-5, abs=1e-6)
    assert 0 < float(padded.metrics["clip_fraction"]) < 1 and float(padded.metrics["kl"]) > 0  # every term is live
    for key in ("clip_fraction", "ratio", "kl", "dual_clip_fraction"):
        assert float(packed.metrics[key]) == pytest.approx(float(padded.metrics[key]), rel=1e-5, abs=1e-7), key
    scale = max(g.abs().max() for g in padded_grad.values())
    assert scale > 0
    for name, grad in padded_grad.items():
        assert torch.allclose(packed_grad[name], grad, rtol=1e-4, atol=1e-6 * scale), name


@pytest.mark.parametrize("packed", [False, True])
def test_grpo_log_probs_are_the_tempered_sampling_policys(models, packed):
    """Sampled at T, the rollout's tokens are scored under softmax(logits / T) by the learner: for the ratio's
    old log-probs, the reference's and the loss's own (TRL's GRPOTrainer and verl do the same)."""
    policy, _ = models
    rows = _rows("labelled")
    batching = MicroBatching(4, tokens=40, packed=packed)
    tempered = _token_logps(policy, rows, batching, 0, torch.device("cpu"), FP32, temperature=0.7)
    for example, values in zip(rows, tempered):  # by hand, one row at a time
        ids = torch.tensor([[*example.prompt, *example.responses[0]]])
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0, len(example.prompt) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, ids[0, len(example.prompt):, None])[:, 0]
        assert torch.allclose(values, expected, atol=1e-5)
    batch, _ = collate(rows, "labelled", pad_id=0, packed=packed)
    advantages = torch.tensor([1.5, -0.7, 0.3, -2.0, 0.9, -0.1])
    at_t, _ = grpo_loss(get_objective("grpo"), {}, policy, batch, advantages, 50.0, tempered, temperature=0.7)
    at_1, _ = grpo_loss(get_objective("grpo"), {}, policy, batch, advantages, 50.0, tempered)
    assert float(at_t.metrics["ratio"]) == pytest.approx(1.0, abs=1e-5) and float(at_1.metrics["ratio"]) != pytest.approx(1.0, abs=1e-2)


def test_per_sequence_values_go_back_where_they_came_from():
    rows = _rows("labelled")
    batch, _ = collate(rows, "labelled", pad_id=0, packed=True)
    _, mask = shifted_targets(batch)
    values = torch.randn(mask.shape)
    split = batch.sequence_tokens(values, mask)
    assert [len(v) for v in split] == [len(e.responses[0]) for e in rows]
    placed = batch.place(split, mask)
    assert torch.equal(placed[mask], values[mask]) and not placed[~mask].any()
    per_token = batch.per_token(torch.arange(len(rows), dtype=torch.float32))
    assert torch.equal(per_token[batch.sequence_ids >= 0], batch.sequence_ids[batch.sequence_ids >= 0].float())


def test_packed_rows_hold_every_sequence_once_no_wider_than_the_longest_and_mask_each_boundary():
    rows = _rows("paired", 4)
    rows[1] = Example((), rows[1].responses)  # no prompt: its first response token follows another sequence's last
    batch, _ = collate(rows, "paired", pad_id=0, packed=True)
    lengths = [len(e.prompt) + len(e.responses[side]) for side in (0, 1) for e in rows]
    padded, _ = collate(rows, "paired", pad_id=0)
    assert batch.input_ids.shape[1] == max(lengths) and batch.input_ids.shape[0] < padded.input_ids.shape[0]
    assert int(batch.attention_mask.sum()) == sum(lengths)  # every token once
    ids = batch.sequence_ids[batch.sequence_ids >= 0]
    assert sorted(ids.bincount().tolist()) == sorted(lengths) and ids.bincount().tolist() == lengths
    for i, length in enumerate(lengths):  # each sequence whole, in order, positions from 0
        where = batch.sequence_ids == i
        row = int(where.any(1).nonzero()[0])
        assert batch.position_ids[where].tolist() == list(range(length))
        prompt, response = (rows + rows)[i].prompt, rows[i % 4].responses[i // 4]
        assert batch.input_ids[row][where[row]].tolist() == list(prompt + response)
    _, mask = shifted_targets(batch)
    # a response token is a target when a token of its own sequence precedes it (as in a padded row)
    targets = [len(e.responses[side]) - (len(e.prompt) == 0) for side in (0, 1) for e in rows]
    assert batch.sequence_sums(torch.ones_like(mask, dtype=torch.long), mask).tolist() == targets


def test_rows_are_filled_first_fit_by_decreasing_length():
    assert pack_rows([5, 10, 3, 2, 7], 10) == [[1], [4, 2], [0, 3]]
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]


def test_the_plan_keeps_order_and_both_limits():
    tokens = [30, 50, 10, 70, 200, 20, 20, 20]
    plan = MicroBatching(size=3, tokens=100, packed=True).plan(list(range(8)), tokens)
    assert [u for group in plan for u in group] == list(range(8))
    assert plan == [[0, 1, 2], [3], [4], [5, 6, 7]]  # 200 > 100: alone
    assert MicroBatching(size=3).plan(list(range(8)), tokens) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_a_worker_with_fewer_micro_batches_is_cut_to_the_largest_count():
    tokens = {0: 10, 1: 10, 2: 60, 3: 10, 4: 10}
    groups = split_to([[0, 1, 2, 3, 4]], tokens, 3)
    assert len(groups) == 3 and [u for g in groups for u in g] == [0, 1, 2, 3, 4]
    assert split_to([[0], [1]], tokens, 2) == [[0], [1]]
    with pytest.raises(ValueError, match="cannot cut 2 units into 3"):
        split_to([[0], [1]], tokens, 3)


def test_a_token_budget_needs_padding_free_rows():
    with pytest.raises(ValueError, match="padding_free=true"):
        LearnerConfig(micro_batch_tokens=4096)
    assert LearnerConfig(padding_free=True, micro_batch_tokens=4096).micro_batch_tokens == 4096
