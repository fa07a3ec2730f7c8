import pytest
import torch

from fpa_ray.config import load_config
from fpa_ray.learner.forward import TokenizedBatch
from fpa_ray.learner.grpo_loop import rollout_examples
from fpa_ray.config import ConfigError
from fpa_ray.learner.data import global_order
from fpa_ray.grpo_layouts import grpo_layout
from fpa_ray.pipelines.online_grpo import _spans, step_prompts


def test_rollout_rows_are_cut_to_max_length_and_counted():
    rollout = {"prompt_token_ids": [[1, 2, 3], [4, 5]], "response_token_ids": [[6, 7, 8, 9], [10]], "advantages": [0.5, -0.5],
               "sampling_logprobs": [[-0.1, -0.2, -0.3, -0.4], [-0.5]]}
    examples, advantages, sampled, cut = rollout_examples(rollout, max_length=5)
    assert [e.responses[0] for e in examples] == [(6, 7), (10,)] and advantages == [0.5, -0.5] and cut == 1
    assert [s.tolist() for s in sampled] == [pytest.approx([-0.1, -0.2]), pytest.approx([-0.5])]  # cut as their tokens
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
    assert grpo_layout(config.grpo).held_resources(config) == {"cpus": 2 + 1 + 2, "gpus": 2 + 2}
    layout = grpo_layout(load_config("tiny-cpu-grpo", ["grpo.layout=split-async", "grpo.max_staleness=2", "grpo.tis_cap=3"]).grpo)
    assert (layout.name, layout.ahead, layout.max_staleness, layout.tis_cap) == ("split-async", 2, 2, 3.0)
    assert (grpo_layout(config.grpo).ahead, grpo_layout(config.grpo).tis_cap) == (0, None)


def test_colocated_holds_one_bundle_per_learner_worker_with_its_engine():
    from fpa_ray.placement import held_together

    config = load_config("qwen25-math-7b-grpo-colocated")
    layout = grpo_layout(config.grpo)
    assert layout.colocated and layout.worker_bundle(config) == {"CPU": 4 + 2, "GPU": 1}
    assert layout.held_resources(config) == {"cpus": 8 * 6 + 8, "gpus": 8}  # one set of 8 GPUs, not samplers' + learners'
    assert layout.held_resources(config)["cpus"] == grpo_layout(load_config("qwen25-math-7b-grpo").grpo).held_resources(
        load_config("qwen25-math-7b-grpo"))["cpus"]  # the same CPUs as the split recipe
    [[verifier, learner]] = held_together(config)
    assert (learner.name, learner.count, learner.each) == ("colocated learner", 8, {"CPU": 6, "GPU": 1}) and verifier.count == 8


def test_colocated_settings_that_cannot_share_a_device_are_refused_naming_them():
    colocated = ["grpo.layout=colocated", "grpo.weight_sync=same_device"]
    with pytest.raises(ConfigError, match=r"sampler.num_actors \(1\) must equal learner.num_workers \(2\)"):
        load_config("tiny-cpu-grpo", colocated)
    with pytest.raises(ConfigError, match="sampler.gpus_per_actor .* must equal learner.gpus_per_worker"):
        load_config("tiny-cpu-grpo", [*colocated, "sampler.num_actors=2", "sampler.gpus_per_actor=1"])
    with pytest.raises(ConfigError, match="grpo.layout=colocated with grpo.weight_sync=collective"):
        load_config("tiny-cpu-grpo", ["grpo.layout=colocated", "sampler.num_actors=2"])
    with pytest.raises(ConfigError, match="grpo.layout=split with grpo.weight_sync=same_device"):
        load_config("tiny-cpu-grpo", ["grpo.weight_sync=same_device"])


def test_split_async_needs_the_policys_own_sampling_distribution():
    with pytest.raises(ConfigError, match="split-async corrects for the stale sampler .* sampler.top_p 1"):
        load_config("tiny-cpu-grpo", ["grpo.layout=split-async", "sampler.top_p=0.9"])
    with pytest.raises(ConfigError, match="split-async .* sampler.logprobs_mode processed"):
        load_config("tiny-cpu-grpo", ["grpo.layout=split-async", "sampler.logprobs_mode=raw"])
    assert load_config("tiny-cpu-grpo", ["grpo.layout=split-async", "sampler.temperature=0.7"]).sampler.temperature == 0.7


class _ControllerStandIn:
    """Records the rollout requests a RolloutFeed makes: the Ray actor's `.remote` calls, answered at
    once (ray.get is the identity here); the real controller serves the feed in test_online_grpo.py."""

    def __init__(self, resync_at=()):
        self.asked, self.resync_at = [], set(resync_at)
        self.rollout = self

    def remote(self, step):
        self.asked.append(step)
        return {"resync": True} if step in self.resync_at else {"step": step}


def test_the_feed_asks_for_the_layouts_rollouts_ahead_once_each(monkeypatch):
    import ray

    from fpa_ray.learner.grpo_loop import RolloutFeed

    monkeypatch.setattr(ray, "get", lambda answer: answer)

    controller = _ControllerStandIn()
    feed = RolloutFeed(controller, ahead=2, steps=5)
    assert [feed.take(step)["step"] for step in range(5)] == list(range(5))
    assert controller.asked == [0, 1, 2, 3, 4]  # each once; step s+2 asked before step s trains
    split = _ControllerStandIn()
    feed = RolloutFeed(split, ahead=0, steps=3)
    for step in range(3):
        feed.take(step)
        assert split.asked == list(range(step + 1))  # nothing asked before the step's weights are sent
    resync = _ControllerStandIn(resync_at={1})
    feed = RolloutFeed(resync, ahead=1, steps=4)
    feed.take(0)
    assert feed.take(1) == {"resync": True} and not feed.pending  # asked again after the weights are resent
    resync.resync_at.clear()
    assert feed.take(1) == {"step": 1} and resync.asked == [0, 1, 1, 2]


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
