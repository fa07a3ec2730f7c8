"""The fit check: every pool of a run placed on the cluster's nodes before any stage starts."""

import pytest

from fpa_ray.config import load_config
from fpa_ray.placement import ClusterTooSmall, check_fit, held_together, run_pools, shortfall

EIGHT_GPU_NODE = {"CPU": 128.0, "GPU": 8.0, "memory": 1e12}
THIS_MACHINE = {"CPU": 4.0, "memory": 2e10}


def test_the_embedded_default_fits_the_local_cluster_of_four_logical_cpus():
    for name in ("tiny-cpu", "tiny-cpu-grpo"):
        assert check_fit(load_config(name), [THIS_MACHINE]) == []


def test_a_gpu_recipe_on_a_cpu_machine_fails_naming_the_pool_what_it_asks_and_what_the_nodes_offer():
    with pytest.raises(ClusterTooSmall) as error:
        check_fit(load_config("qwen25-math-7b-rpo"), [THIS_MACHINE])
    message = str(error.value)
    assert "the sampler pool does not fit the cluster: it asks 8 x {CPU: 4, GPU: 1} = {CPU: 32, GPU: 8}" in message
    assert "the learner pool does not fit the cluster: it asks 8 x {CPU: 8, GPU: 1} = {CPU: 64, GPU: 8}" in message
    assert "learner.num_workers, cpus_per_worker, gpus_per_worker, resources" in message
    assert "room for 0 of its 8; the cluster's 1 node(s) offer {CPU: 4}" in message
    assert "the verifier pool does not fit the cluster: it asks 8 x {CPU: 1} = {CPU: 8}" in message

def test_every_gpu_recipe_fits_one_eight_gpu_node():
    for name in ("qwen25-math-7b-rpo", "llama32-3b-instruct-kto", "qwen25-math-7b-grpo", "qwen25-math-7b-dapo"):
        assert check_fit(load_config(name), [EIGHT_GPU_NODE]) == [], name


def test_offline_pools_run_one_after_another_and_grpo_holds_all_three_at_once():
    offline, online = load_config("qwen25-math-7b-rpo"), load_config("qwen25-math-7b-grpo")
    assert [[p.name for p in group] for group in held_together(offline)] == [["sampler"], ["verifier"], ["learner"]]
    assert [[p.name for p in group] for group in held_together(online)] == [["sampler", "verifier", "learner"]]
    # 4 sampler + 4 learner GPUs fit 8, not 7; offline, 8 samplers then 8 learners fit 8 but not 7
    seven = {**EIGHT_GPU_NODE, "GPU": 7.0}
    problem = shortfall(held_together(online)[0], [seven])
    assert problem is not None and "held at the same time as the verifier and learner pool(s), and there is room for 3 of its 4" in problem
    assert len(check_fit(offline.model_copy(update={"fit_check": "warn"}), [seven])) == 2  # warn: listed, not raised


def test_each_actor_fits_on_one_node_not_on_the_sum_of_two():
    config = load_config("qwen25-math-7b-rpo")
    halves = [{**EIGHT_GPU_NODE, "GPU": 4.0, "CPU": 30.0}] * 2  # 8 GPUs in all, but 30 CPUs each: 3 learners of 8 CPUs per node
    problem = shortfall([run_pools(config)[2]], halves)
    assert problem is not None and "room for 6 of its 8" in problem


def test_custom_resources_keep_a_pool_on_the_nodes_that_offer_them():
    config = load_config("tiny-cpu-grpo", ["sampler.resources={sampler_node: 1}"])
    nodes = [{"CPU": 8.0}, {"CPU": 1.0, "sampler_node": 1.0}]
    assert check_fit(config, nodes) == []
    with pytest.raises(ClusterTooSmall, match="the sampler pool does not fit"):
        check_fit(config, [{"CPU": 8.0}])
