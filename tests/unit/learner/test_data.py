"""Row rules of the learner's data preparation, the batch order and the LR schedule."""

import math

import pytest

from fpa_ray.config import LearnerConfig
from fpa_ray.learner.data import DatasetRowError, collate, prepare_examples, prepare_row
from fpa_ray.learner.data import global_order
from fpa_ray.learner.optim import lr_factor


def _pair(prompt, chosen, rejected, **extra):
    return {"prompt_token_ids": prompt, "chosen_token_ids": chosen, "rejected_token_ids": rejected, **extra}


def test_rules_drop_and_truncate_with_counts():
    rows = [
        _pair([1, 2], [3, 4], [5, 6]),
        _pair([1, 2], [3, 4], [3, 4]),  # identical
        _pair([1, 2], [], [5]),  # empty response
        _pair(list(range(10)), [3], [4]),  # prompt fills max_length
        _pair([1, 2], [3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 10]),  # identical once cut to fit
        _pair([1, 2], [3, 4, 5, 6, 7, 8, 9, 1], [5, 6, 7]),  # chosen cut
    ]
    prepared = prepare_examples(rows, "paired", max_length=8)
    assert prepared.counts == {"identical_pair": 2, "empty_response": 1, "prompt_too_long": 1, "truncated": 1, "kept": 2}
    cut = next(e for e in prepared.examples if e.truncated)
    assert cut.responses[0] == (3, 4, 5, 6, 7, 8) and len(cut.prompt) + len(cut.responses[0]) == 8


def test_examples_come_out_in_content_order_whatever_the_row_order():
    rows = [_pair([i], [i, 1], [i, 2]) for i in range(5)]
    assert prepare_examples(rows, "paired", 16).examples == prepare_examples(rows[::-1], "paired", 16).examples


def test_missing_columns_and_bad_labels_name_the_row():
    with pytest.raises(DatasetRowError, match=r"row 0: needs column 'rejected_token_ids' or 'rejected'"):
        prepare_row({"prompt_token_ids": [1], "chosen_token_ids": [2]}, 0, "paired", 16)
    with pytest.raises(DatasetRowError, match=r"row 3: column 'label' must be a boolean, got 'yes'"):
        prepare_row({"prompt_token_ids": [1], "completion_token_ids": [2], "label": "yes"}, 3, "labelled", 16)
    with pytest.raises(DatasetRowError, match=r"is text but no tokenizer"):
        prepare_row({"prompt": "a", "completion": "b", "label": True}, 0, "labelled", 16)


def test_collate_layout_and_reference_columns():
    rows = [_pair([1, 2], [3], [4, 5], ref_chosen_logp=-1.0, ref_rejected_logp=-2.0), _pair([7], [8, 9], [6], ref_chosen_logp=-3.0, ref_rejected_logp=-4.0)]
    examples = prepare_examples(rows, "paired", 16).examples
    batch, ref = collate(examples, "paired", pad_id=0)
    # chosen rows first, then the rejected rows of the same pairs, right-padded
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [7, 8, 9, 0], [1, 2, 4, 5], [7, 6, 0, 0]]
    assert batch.response_mask[0].tolist() == [False, False, True, False] and batch.attention_mask[3].tolist() == [1, 1, 0, 0]
    assert ref.tolist() == [-1.0, -3.0, -2.0, -4.0]
    labelled = prepare_examples([{"prompt_token_ids": [1], "completion_token_ids": [2], "label": True}], "labelled", 16).examples
    batch, ref = collate(labelled, "labelled", pad_id=0)
    assert batch.correct.tolist() == [True] and ref is None


def test_global_order_is_a_seeded_permutation_per_epoch():
    steps = [global_order(10, s, 5, seed=3) for s in range(4)]
    assert sorted(steps[0] + steps[1]) == list(range(10)) and sorted(steps[2] + steps[3]) == list(range(10))
    assert steps[0] != steps[2] and global_order(10, 0, 5, seed=3) == steps[0] and global_order(10, 0, 5, seed=4) != steps[0]
    assert len(global_order(11, 1, 5, seed=0)) == 5  # the 11th row waits for another epoch


def test_lr_schedule():
    config = LearnerConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.1, lr_schedule="cosine", global_batch_size=16)
    assert [lr_factor(s, 10, config) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, config) == pytest.approx(1.0) and lr_factor(10, 10, config) == pytest.approx(0.1)
    assert lr_factor(6, 10, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    constant = config.model_copy(update={"lr_schedule": "constant"})
    assert lr_factor(9, 10, constant) == 1.0


def test_batch_sizes_must_divide():
    with pytest.raises(ValueError, match=r"global_batch_size \(10\) must be a multiple of num_workers x micro_batch_size \(8\)"):
        LearnerConfig(global_batch_size=10, num_workers=2, micro_batch_size=4)
    assert LearnerConfig(global_batch_size=16, num_workers=2, micro_batch_size=4).accumulation_steps == 2


def test_a_text_response_gets_eos_only_where_it_does_not_end_in_one():
    from fpa_ray.tiny import build_tokenizer

    tokenizer = build_tokenizer(["x = 1 + 2 = 3", "the answer is 3"], vocab_size=300)
    eos = tokenizer.eos_token_id
    plain = tokenizer("x = 3", add_special_tokens=False)["input_ids"]
    without, ending = ({"prompt": "the answer", "completion": text, "label": True} for text in ("x = 3", "x = 3" + tokenizer.eos_token))
    assert prepare_row(without, 0, "labelled", 64, tokenizer).responses[0] == (*plain, eos)  # TRL's rule: appended when missing
    assert prepare_row(ending, 1, "labelled", 64, tokenizer).responses[0] == (*plain, eos), "an EOS already there must not be doubled"
    assert prepare_row(without, 0, "labelled", 64, tokenizer).prompt[-1] != eos


def test_mismatched_examples_pair_each_prompt_with_the_next_rows_response_over_the_global_batch():
    from fpa_ray.learner.data import Example, mismatched_examples

    rows = [Example((i, i), ((10 + i, 20 + i, 30 + i),), label=i % 2 == 0) for i in range(4)]
    kl = mismatched_examples(rows, max_length=4)
    assert [e.prompt for e in kl] == [r.prompt for r in rows]
    assert [e.responses[0] for e in kl] == [(11, 21), (12, 22), (13, 23), (10, 20)]  # cut to fit max_length
    with pytest.raises(ValueError, match="at least 2 rows per global batch"):
        mismatched_examples(rows[:1], max_length=4)
