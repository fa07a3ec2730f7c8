"""Bad input raises an error that names what is wrong."""

import pytest
import torch

from fpa_ray.objectives import (
    LabelledBatch,
    PairedBatch,
    SequenceStats,
    TokenBatch,
    future_logprobs,
    future_sequence_logprobs,
    get_objective,
    group_advantages,
    token_logprobs,
)

from tests.helpers.objective_batches import random_batch


def _stats(n=3, **overrides):
    fields = dict(logp=-torch.rand(n) * 5, num_tokens=torch.full((n,), 5), ref_logp=-torch.rand(n) * 5)
    fields.update(overrides)
    return SequenceStats(**fields)


def test_unknown_objective_lists_registered_ones():
    with pytest.raises(ValueError, match=r"unknown objective 'dop'.*dpo.*simper"):
        get_objective("dop")


def test_unknown_hyperparameter_is_named():
    with pytest.raises(TypeError, match=r"no parameter\(s\) \['alpha'\].*accepts \['beta'\]"):
        get_objective("dpo")(random_batch("dpo"), alpha=1.0)


def test_mismatched_batch_sizes_name_the_field():
    batch = PairedBatch(_stats(3), _stats(4))
    with pytest.raises(ValueError, match=r"rejected.logp has 4 entries but the batch has 3"):
        get_objective("dpo")(batch)
    with pytest.raises(ValueError, match=r"chosen.ref_logp has 2 entries"):
        get_objective("dpo")(PairedBatch(_stats(3, ref_logp=torch.zeros(2)), _stats(3)))
    with pytest.raises(ValueError, match=r"chosen.logp must be 1-D"):
        get_objective("dpo")(PairedBatch(_stats(3, logp=torch.zeros(3, 2)), _stats(3)))


@pytest.mark.parametrize("field", ["logp", "ref_logp", "future_logp"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_log_probs_are_rejected(field, bad):
    values = -torch.rand(3)
    values[1] = bad
    chosen = _stats(**{"future_logp": -torch.rand(3), field: values})
    rejected = _stats(future_logp=-torch.rand(3))
    with pytest.raises(ValueError, match=rf"chosen.{field} holds 1 non-finite value.*index \[1\]"):
        get_objective("dpo")(PairedBatch(chosen, rejected))


def test_empty_response_is_rejected():
    with pytest.raises(ValueError, match=r"samples.num_tokens must be positive.*index \[2\]"):
        get_objective("offline_rl")(LabelledBatch(_stats(num_tokens=torch.tensor([3, 1, 0])), torch.tensor([True, False, True])))


def test_missing_reference_is_named():
    with pytest.raises(ValueError, match=r"'dpo' needs rejected.ref_logp"):
        get_objective("dpo")(PairedBatch(_stats(), _stats(ref_logp=None)))
    get_objective("simper")(PairedBatch(_stats(ref_logp=None), _stats(ref_logp=None)))  # reference-free


def test_wrong_batch_type_and_labels():
    with pytest.raises(TypeError, match=r"'kto' takes a LabelledBatch, got PairedBatch"):
        get_objective("kto")(random_batch("dpo"))
    with pytest.raises(ValueError, match=r"correct must be a bool tensor"):
        get_objective("offline_rl")(LabelledBatch(_stats(), torch.tensor([1.0, -1.0, 1.0])))
    with pytest.raises(ValueError, match=r"needs kl_reference"):
        get_objective("kto")(LabelledBatch(_stats(), torch.tensor([True, False, True])))


def test_partial_future_and_misplaced_apply_to():
    with pytest.raises(ValueError, match=r"future_logp must be given for every sequence"):
        get_objective("dpo")(PairedBatch(_stats(future_logp=-torch.rand(3)), _stats()))
    with pytest.raises(ValueError, match=r"apply_to='rejected' targets FPA"):
        get_objective("dpo")(PairedBatch(_stats(), _stats()), apply_to="rejected")
    with pytest.raises(ValueError, match=r"apply_to must be"):
        get_objective("dpo")(PairedBatch(_stats(), _stats()), apply_to="negative")
    with pytest.raises(ValueError, match=r"future_logp must not require grad"):
        get_objective("dpo")(PairedBatch(_stats(future_logp=-torch.rand(3, requires_grad=True)), _stats(future_logp=-torch.rand(3))))


@pytest.mark.parametrize("normalizer", [0, -1.0, True, "7"])
def test_bad_normalizer(normalizer):
    with pytest.raises(ValueError, match=r"normalizer must be a positive number"):
        get_objective("dpo")(random_batch("dpo"), normalizer=normalizer)


@pytest.mark.parametrize("lam", [-0.5, float("inf"), float("nan"), "1", True])
def test_bad_lambda(lam):
    logits = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0"):
        future_logprobs(logits, logits, torch.zeros(1, 3, dtype=torch.long), lam, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0"):
        future_sequence_logprobs(torch.zeros(2), torch.zeros(2), lam)


def test_token_level_inputs():
    logits, labels, mask = torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"mask row 1 selects no tokens"):
        future_logprobs(logits, logits, labels, 1.0, empty)
    with pytest.raises(ValueError, match=r"ref_logits has shape \(2, 3, 6\)"):
        future_logprobs(logits, torch.randn(2, 3, 6), labels, 1.0, mask)
    with pytest.raises(ValueError, match=r"labels has shape \(2, 4\)"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long), mask)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        token_logprobs(logits, labels + 5, mask)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor"):
        token_logprobs(logits, labels, mask.long())
    with pytest.raises(ValueError, match=r"mode must be"):
        future_logprobs(logits, logits, labels, 1.0, mask, mode="approx")
    with pytest.raises(ValueError, match=r"chunk_size must be positive"):
        future_logprobs(logits, logits, labels, 1.0, mask, chunk_size=0)
    nan_logits = logits.clone()
    nan_logits[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"not finite"):
        future_logprobs(nan_logits, logits, labels, 1.0, mask)


def test_grpo_inputs():
    logp = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask selects no tokens"):
        get_objective("grpo")(TokenBatch(logp, logp, ~mask, torch.zeros(2)))
    with pytest.raises(ValueError, match=r"old_logp has shape \(2, 2\)"):
        get_objective("grpo")(TokenBatch(logp, torch.zeros(2, 2), mask, torch.zeros(2)))
    with pytest.raises(ValueError, match=r"advantages has 3 entries"):
        get_objective("grpo")(TokenBatch(logp, logp, mask, torch.zeros(3)))
    with pytest.raises(ValueError, match=r"kl_coef > 0 needs ref_logp"):
        get_objective("grpo")(TokenBatch(logp, logp, mask, torch.zeros(2)), kl_coef=0.1)
    bad = logp.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"logp holds 1 non-finite"):
        get_objective("grpo")(TokenBatch(bad, logp, mask, torch.zeros(2)))
    padded = mask.clone()
    padded[0, 1] = False  # NaN on padding is harmless
    assert torch.isfinite(get_objective("grpo")(TokenBatch(bad, logp, padded, torch.ones(2))).loss)
    with pytest.raises(ValueError, match=r"group_size must be >= 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"multiple of group_size=3"):
        group_advantages(torch.zeros(4), 3)
