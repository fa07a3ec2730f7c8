"""The online GRPO pool on the session's real local Ray cluster: rollouts and the weight-sync round trip.

A whole GRPO run and `compare` are tested on the job submitted in test_job_submit.py."""

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from fpa_ray.config import load_config
from fpa_ray.data.sources import load_prompts
from fpa_ray.pipelines.online_grpo import RolloutController, rollout_seed, step_prompts
from fpa_ray.weights import group as weight_group
from fpa_ray.weights.probe import learner_logprobs, probe_ids
from tests.helpers.rollout_gaps import sampled_gaps

pytestmark = pytest.mark.slow


def _perturbed_copy(policy: Path, destination: Path):
    """The policy with noise on every weight: a 'next policy' the samplers must pick up (saved, and the model)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(destination)
    return destination, model


def test_rollout_advantages_and_an_in_place_sync_round_trip_on_the_real_pools(ray_cluster, tiny_policy, tmp_path):
    config = load_config("tiny-cpu-grpo", [f"output_dir={tmp_path}", "sampler.n=4", "grpo.prompts_per_step=6", "learner.global_batch_size=8", "learner.micro_batch_size=4",
                                           "sampler.max_new_tokens=48", "verifier.max_failure_share=1.0"])  # the noisy policy babbles
    prompts = load_prompts(config.data.train, config.data.synthetic, config.seed).rows[:24]
    controller = ray_cluster.remote(RolloutController).remote(config, str(tiny_policy), prompts, str(tmp_path))

    rollout = ray_cluster.get(controller.rollout.remote(0))
    table = pd.read_parquet(tmp_path / "online" / "rollouts" / "step-00000.parquet")
    assert len(table) == len(rollout["advantages"]) == 6 * 4
    assert set(table["status"]) <= {"correct", "incorrect", "unparseable"} and table["response"].str.len().gt(0).all()
    # Advantages: each prompt's 4 samples are consecutive; (r - group mean) / (group std + 1e-6), recomputed here.
    for (_, group), start in zip(table.groupby("prompt_id", sort=False), range(0, 24, 4)):
        assert list(group.index) == list(range(start, start + 4)) and sorted(group["sample_index"]) == [0, 1, 2, 3]
        rewards = group["reward"].to_numpy()
        expected = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
        assert rollout["advantages"][start : start + 4] == pytest.approx(expected.tolist(), abs=1e-5)
    assert rollout["stats"]["reward_mean"] == pytest.approx(table["reward"].mean())
    _dynamic_sampling_trains_only_mixed_groups_and_counts_what_it_drops(ray_cluster, config, prompts, tiny_policy, tmp_path)

    # The learner's next weights through the object store, as grpo_loop sends them: the probe passes, and
    # the next rollout is sampled from the new weights, even when the sampler actor is killed before it:
    # the pool restarts and the controller hands it the latest weights again.
    new_policy, model = _perturbed_copy(tiny_policy, tmp_path / "next")
    expected = learner_logprobs(new_policy, *probe_ids(AutoTokenizer.from_pretrained(tiny_policy)))
    reply = ray_cluster.get(controller.deliver.remote("object_store", [ray_cluster.put(model.state_dict())], 1, expected))
    assert not reply["resync"] and reply["gap"] < 1e-3
    ray_cluster.kill(ray_cluster.get_actor(f"{config.name}-sampler-0"))
    ray_cluster.get(controller.rollout.remote(1))
    _sampled_from(tmp_path, 1, new_policy, tiny_policy)
    # The disk fallback (grpo.weight_sync=disk, and a learner restored from its checkpoint): back to the start.
    start = learner_logprobs(tiny_policy, *probe_ids(AutoTokenizer.from_pretrained(tiny_policy)))
    assert ray_cluster.get(controller.deliver.remote("disk", str(tiny_policy), 2, start))["gap"] < 1e-3
    assert ray_cluster.get(ray_cluster.get_actor(f"{config.name}-r1-sampler-0").gap.remote(str(new_policy))) > 1e-2

    # The default, grpo.weight_sync=collective: this process as the learner's rank 0 broadcasts over gloo
    # to the sampler's vLLM worker. (A sampler lost after it comes back on its start weights, which only the
    # learner holds, and the learner sends them again: test_grpo_layouts.py kills a rollout worker under the loop.)
    state = model.state_dict()
    address = weight_group.new_address("test-weights", 1 + ray_cluster.get(controller.weight_group_ranks.remote()), "gloo")
    joined = controller.open_weight_group.remote(address)
    weight_group.join(address, 0, address.host)
    ray_cluster.get(joined)
    reply = controller.deliver.remote("collective", (address.name, weight_group.specs(state.items())), 3, expected)
    weight_group.send(address.name, state.values(), torch.device("cpu"))
    assert ray_cluster.get(reply)["gap"] < 1e-3
    weight_group.leave(address.name)
    ray_cluster.get(controller.rollout.remote(3))
    _sampled_from(tmp_path, 3, new_policy, tiny_policy)

    serving = ray_cluster.get(ray_cluster.get_actor(f"{config.name}-r1-sampler-0").engine_identity.remote())
    # A learner that stops answering mid-sync (it opened the group and never sends): the sampler gives up
    # after the group's transfer timeout, the controller restarts the pools and asks for a new group.
    address = weight_group.new_address("test-weights-silent", 1 + ray_cluster.get(controller.weight_group_ranks.remote()), "gloo",
                                       transfer_timeout_s=3)
    joined = controller.open_weight_group.remote(address)
    weight_group.join(address, 0, address.host)
    ray_cluster.get(joined)
    started = time.monotonic()
    assert ray_cluster.get(controller.deliver.remote("collective", (address.name, weight_group.specs(state.items())), 4, expected),
                           timeout=120) == {"resync": True}
    assert time.monotonic() - started < 60  # the transfer timeout and a pool restart, not the default 10 minutes
    weight_group.leave(address.name)
    assert ray_cluster.get(ray_cluster.get_actor(f"{config.name}-r2-sampler-0").engine_identity.remote())[0] != serving[0]

    ray_cluster.get(controller.finish.remote())
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    # Each phase is charged from the end of the one before (here the test's own pauses count as training;
    # the learner that never sent is charged to the shutdown that follows it).
    assert [e["stage"] for e in ledger] == ["grpo_startup", "grpo_generate", "grpo_verify", "grpo_sync",  # rollout 0, object store
                                            "grpo_train", "grpo_generate", "grpo_verify",  # rollout 1, after its sampler was killed
                                            "grpo_sync", "grpo_sync",  # disk, then the collective group
                                            "grpo_train", "grpo_generate", "grpo_verify", "grpo_shutdown"]
    assert all(e["cpus"] == 4 for e in ledger)  # what the loop holds: 1 sampler + 1 verifier + 2 learner CPUs
    ray_cluster.kill(controller)


def _sampled_from(run_dir: Path, step: int, policy: Path, other: Path) -> None:
    """Rollout `step`'s first sample came from `policy`, not from `other` (T=1, top_p=1: the
    sampled log-probs are the model's)."""
    near, far = sampled_gaps(run_dir, step, policy, other)
    assert near < 1e-3 and far > 1e-2, (near, far)


IMPOSSIBLE = "-7654321"  # a gold answer no sample gives: that prompt's group is all wrong


def _dynamic_sampling_trains_only_mixed_groups_and_counts_what_it_drops(ray_cluster, config, prompts, policy, tmp_path):
    """DAPO's dynamic sampling on real pools, with gold answers set from the samples the policy will draw
    (seeded, so known in advance): the first batch is all wrong by construction, so further batches are
    sampled until 2 groups with both verdicts are found; exactly those are trained, the rest is on record."""
    from fpa_ray.verifier.extract import extract_answer

    sampler = ray_cluster.get_actor(f"{config.name}-sampler-0")  # still on `policy`'s weights
    samples = ray_cluster.get(sampler.rollout.remote(prompts, rollout_seed(config.seed, 0), "preview")).to_pandas()
    n, wanted = config.sampler.n, 2
    first = set(step_prompts(len(prompts), 0, 0, wanted, config.seed))
    crafted = []
    for index, prompt in enumerate(prompts):
        answers = [extract_answer(r).answer for r in samples["response"][index * n : (index + 1) * n]]
        integers = [a for a in answers if a is not None and re.fullmatch(r"-?\d+", a)]
        clear = all(a is None or a in integers for a in answers)  # no answer math_verify might equate otherwise
        mixed = index not in first and clear and integers and any(a is None or int(a) != int(integers[0]) for a in answers)
        crafted.append(replace(prompt, answer=integers[0] if mixed else IMPOSSIBLE))
    expected, drawn = [], []
    for batch in range(len(prompts) // wanted):
        picked = step_prompts(len(prompts), 0, batch, wanted, config.seed, exclude=set(drawn))
        drawn += picked
        expected += [i for i in picked if crafted[i].answer != IMPOSSIBLE]
        if len(expected) >= wanted:
            break
    assert len(expected) >= wanted, "the policy's samples agree too often to build mixed groups"

    dapo = config.model_copy(update={"name": "dapo", "grpo": config.grpo.model_copy(update={
        "dynamic_sampling": True, "prompts_per_step": wanted, "max_sampling_batches": len(prompts) // wanted})})
    run_dir = tmp_path / "dapo"
    controller = ray_cluster.remote(RolloutController).remote(dapo, str(policy), crafted, str(run_dir))
    rollout = ray_cluster.get(controller.rollout.remote(0))
    ray_cluster.get(controller.finish.remote())
    ray_cluster.kill(controller)
    table = pd.read_parquet(run_dir / "online" / "rollouts" / "step-00000.parquet")
    stats = rollout["stats"]
    batches = table["sampling_batch"].max() + 1
    assert batches == stats["sampling_batches"] > 1 and len(table) == stats["samples_generated"] == len(drawn) * n
    kept = table[table["kept"]]
    assert list(dict.fromkeys(kept["prompt_id"])) == [crafted[i].id for i in expected[:wanted]]
    assert len(rollout["advantages"]) == len(kept) == wanted * n and stats["samples_discarded"] == len(table) - wanted * n
    for _, group in kept.groupby("prompt_id"):  # never a group whose advantages are all zero
        assert 0 < group["reward"].sum() < n and group["advantage"].abs().sum() > 0
    assert rollout["advantages"] == pytest.approx(kept["advantage"].tolist())
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    generated = [e for e in ledger if e["stage"] == "grpo_generate"]  # every batch charged, with its samples
    assert len(generated) == batches and sum(e["samples"] for e in generated) == len(table)
    assert [e["stage"] for e in ledger[1:-1]] == ["grpo_generate", "grpo_verify"] * batches


def test_a_lora_grpo_run_sends_only_its_adapters_and_the_samplers_take_them(ray_cluster, cache, tmp_path):
    """Real Ray Train workers and vLLM-CPU pool, the default collective sync: every sync carries the adapters
    alone (bytes against the full model's), the samplers' probe passes on the weights they merge, the next
    rollout is sampled by the merged policy, and the KL term's reference is the policy with its adapters off."""
    from safetensors.torch import load_file

    from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline
    from tests.helpers.small_run import GRPO_SMALL, SMALL

    config = load_config("tiny-cpu-grpo", [*SMALL, *GRPO_SMALL, "grpo.steps=2", "grpo.eval_every=1", "learner.lr=1e-2",
                                           "learner.lora={rank: 8, alpha: 16, target_modules: all-linear}",
                                           "objective.params={clip_eps: 0.2, kl_coef: 0.04}", "name=lora-grpo", f"output_dir={tmp_path}"])
    pipeline = OnlineGRPOPipeline(config, log=lambda line: None)
    pipeline.prepare()
    policy = pipeline.initial_policy()
    snapshots = dict(pipeline.train_online(policy))
    online = pipeline.run_dir / "online"
    metrics = [json.loads(line) for line in (online / "metrics.jsonl").read_text().splitlines()]
    adapter = load_file(snapshots[1] / "adapter" / "adapter_model.safetensors")
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter.values())
    full_bytes = sum(t.numel() * t.element_size() for t in load_file(policy / "model.safetensors").values())
    synced = [m for m in metrics if m["rollout_step"] == 2]
    assert synced and all(m["sync_bytes"] == adapter_bytes for m in synced)  # the adapters, nothing else
    assert adapter_bytes < full_bytes / 5, (adapter_bytes, full_bytes)
    assert all(m["sync_probe_gap"] < config.grpo.probe_tolerance for m in synced)
    assert all(m["kl"] > 0 for m in metrics if m["rollout_step"] == 2)  # the adapters moved the policy off its reference
    _sampled_from(pipeline.run_dir, 1, snapshots[1], policy)  # rollout 2: the merged weights of update 1, not the start's
    assert (snapshots[2] / "adapter" / "adapter_config.json").exists() and (snapshots[2] / "config.json").exists()
