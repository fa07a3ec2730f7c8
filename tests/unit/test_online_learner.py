import pytest
import torch

from fpa_ray.config import load_config
from fpa_ray.learner.forward import TokenizedBatch
from fpa_ray.learner.online import rollout_examples
from fpa_ray.config import ConfigError
from fpa_ray.learner.loop import global_order
from fpa_ray.pipelines.online_grpo import _spans, held_resources, step_prompts


def test_rollout_rows_are_cut_to_max_length_and_counted():
    rollout = {"prompt_token_ids": [[1, 2, 3], [4, 5]], "response_token_ids": [[6, 7, 8, 9], [10]], "advantages": [0.5, -0.5]}
    examples, advantages, cut = rollout_examples(rollout, max_length=5)
    assert [e.responses[0] for e in examples] == [(6, 7), (10,)] and advantages == [0.5, -0.5] and cut == 1
    with pytest.raises(ValueError, match="a rollout prompt has 3 tokens, not less than learner.max_length=3"):
        rollout_examples(rollout, max_length=3)


def test_per_row_values_go_back_to_their_mask_positions():
    mask = torch.tensor([[False, True, True, False], [False, False, True, False]])
    batch = TokenizedBatch(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), mask)  # padded: a row per sequence
    placed = batch.place([torch.tensor([-1.0, -2.0]), torch.tensor([-3.0])], mask)
    assert placed.tolist() == [[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -3.0, 0.0]]
    assert [v.tolist() for v in batch.sequence_tokens(placed, mask)] == [[-1.0, -2.0], [-3.0]]


def test_work_is_split_evenly_and_held_resources_add_up():
    assert _spans(10, 3) == [(0, 4), (4, 3), (7, 3)] and _spans(2, 3) == [(0, 1), (1, 1), (2, 0)]
    config = load_config("tiny-cpu-grpo", ["sampler.num_actors=2", "sampler.gpus_per_actor=1", "learner.gpus_per_worker=1"])
    assert held_resources(config) == {"cpus": 2 + 1 + 2, "gpus": 2 + 2}


def test_dynamic_sampling_draws_new_prompts_for_each_further_batch():
    first = step_prompts(100, 3, 0, 8, seed=0)
    assert first == global_order(100, 3, 8, 0)  # without dynamic sampling nothing changes
    drawn = list(first)
    for batch in (1, 2):
        more = step_prompts(100, 3, batch, 8, seed=0, exclude=set(drawn))
        assert len(more) == 8 and not set(more) & set(drawn) and more == step_prompts(100, 3, batch, 8, seed=0, exclude=set(drawn))
        drawn += more
    assert sorted(step_prompts(20, 3, 1, 8, seed=0, exclude=set(range(15)))) == [15, 16, 17, 18, 19]  # what is left


def test_dapo_options_are_off_by_default_and_checked():
    grpo = load_config("tiny-cpu-grpo").grpo
    assert not grpo.dynamic_sampling and grpo.overlong_buffer is None
    with pytest.raises(ConfigError, match=r"grpo.overlong_buffer \(64\) must be less than sampler.max_new_tokens \(64\)"):
        load_config("tiny-cpu-grpo", ["grpo.overlong_buffer=64"])
    assert load_config("tiny-cpu-grpo", ["grpo.overlong_buffer=16", "grpo.dynamic_sampling=true"]).grpo.overlong_buffer == 16
