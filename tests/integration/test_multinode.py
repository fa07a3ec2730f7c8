"""The main job on a Ray cluster of four nodes on this machine (fpa_ray.local_cluster: a head without
CPUs and a sampler, a verifier and a learner node, each with its own CPUs, object store and role
resource), in a network namespace of its own with only the loopback, submitted with `ray job
submit`, each pool asking for its node's role resource, with the node under generate, verify and
train SIGKILLed in turn and replaced (tests/helpers/multinode_run.py runs it once; each test here
checks one part of that run). Each stage ends on the replacement with every sample and verdict
exactly once and every training step once. That a restart gives the samples, verdicts and weights
of an uninterrupted run is checked on the session's cluster, where the actor or worker dies the same
way: test_sampler_stage.py, test_verifier_stage.py, test_learner.py (whose LearnerUnschedulable test
is a learner whose node is lost and not replaced). A GRPO rollout worker killed under the loop is
test_recipes.py's (the GRPO recipe's run).
"""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.multinode_run import RUN

LIMIT_S = 1200  # s; alone, the run first builds the warm start (~1 min) that earlier tests of a full session built
pytestmark = [pytest.mark.slow, pytest.mark.timeout(LIMIT_S)]
ROOT = Path(__file__).resolve().parents[2]
PROMPTS, N, EVAL_PROBLEMS, EVAL_SAMPLES, STEPS = 64, 8, 16, 2, 20  # small_run.SMALL, multinode_run.TRAIN


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -n` (root, or user namespaces) for a loopback-only multi-node cluster")
    out, runs = tmp_path_factory.mktemp("multinode"), tmp_path_factory.mktemp("multinode-runs")
    cache = tmp_path_factory.getbasetemp() / "pipeline-cache"  # the session's warm start
    process = subprocess.Popen(["unshare", "-n", sys.executable, "-m", "tests.helpers.multinode_run", str(out / "result.json"),
                                str(runs), str(cache)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=LIMIT_S - 60)
    finally:  # a time limit reached: SIGTERM lets the run stop its cluster (a SIGKILL would leave it running jobs)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    assert process.returncode == 0, output[-4000:]
    return json.loads((out / "result.json").read_text()), runs / RUN


def _event(part: dict, stage: str) -> dict:
    events = [e for e in part["events"] if e["stage"] == stage]
    assert len(events) == 1, part["events"]  # the moment came while the stage ran: a kill, not a run that ended first
    return events[0]


def _keys(frame: pd.DataFrame) -> Counter:
    return Counter(zip(frame["prompt_id"], frame["sample_index"]))


def _samples(directory: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(directory.glob("shard-*.parquet"))])


def test_each_pool_runs_on_its_own_node_and_the_driver_on_the_head(cluster_run):
    result, run = cluster_run
    assert result["job"]["status"] == "SUCCEEDED", result["job"]["logs"][-3000:]
    roles = {n["node_id"]: next((r.removesuffix("_node") for r in n["resources_total"] if r.endswith("_node")), "head")
             for n in result["nodes"] if n.get("resources_total")}
    placed_on: dict[str, set[str]] = {}
    for actor in result["actors"]:  # the lost nodes' actors too, and their replacements'
        if actor["node_id"] is None:  # created but never placed (a pool's spare, ended with its stage): it ran nowhere
            assert actor["state"] == "DEAD", actor
            continue
        placed_on.setdefault(actor["class_name"], set()).add(roles[actor["node_id"]])
    samplers = {r for name, rs in placed_on.items() if "SamplerActor" in name for r in rs}
    verifiers = {r for name, rs in placed_on.items() if "VerifierActor" in name for r in rs}
    assert samplers == {"sampler"} and verifiers == {"verifier"}, placed_on  # generation and evaluation alike
    assert placed_on["RayTrainWorker"] == {"learner"}, placed_on
    assert roles[result["job"]["driver_node_id"]] == "head"
    assert [p["point"] for p in json.loads((run / "curve.json").read_text())["points"]] == ["start", "after round 1"]
    assert sorted(e["role"] for e in result["events"]) == ["learner", "sampler", "verifier"]  # one node of each role lost
    assert sum(1 for n in result["nodes"] if n["state"] == "DEAD") == 3


def test_a_node_lost_mid_generate_loses_and_duplicates_no_sample(cluster_run):
    result, run = cluster_run
    lost = _event(result, "generate")
    assert "SamplerActor" in " ".join(lost["actors"]) and 0 < lost["progress"] < PROMPTS // 16  # shards written at the kill
    samples = _samples(run / "round_1" / "samples")
    keys = _keys(samples)
    assert len(keys) == PROMPTS * N and set(keys.values()) == {1}  # every prompt its N samples, each once
    assert Counter(samples["prompt_id"]).most_common()[-1][1] == N


def test_a_node_lost_mid_verify_gives_every_sample_exactly_one_verdict(cluster_run):
    result, run = cluster_run
    lost = _event(result, "verify")
    assert "VerifierActor" in " ".join(lost["actors"]) and lost["progress"] >= 1  # batches graded before the kill
    verified = pd.read_parquet(run / "round_1" / "verified" / "data")
    keys = _keys(verified)
    assert len(keys) == PROMPTS * N and set(keys.values()) == {1}
    assert set(verified["status"]) <= {"correct", "incorrect", "unparseable"}  # graded, not lost to the kill as errors


def test_a_node_lost_mid_train_resumes_from_its_checkpoint(cluster_run):
    result, run = cluster_run
    lost = _event(result, "train")
    assert "RayTrainWorker" in lost["actors"] and lost["progress"] >= 1  # a checkpoint registered before the kill
    metrics = [json.loads(line) for line in (run / "round_1" / "train" / "metrics.jsonl").read_text().splitlines() if line]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # each step logged once
    # Resumed, not restarted: the steps up to the checkpoint kept the lines written before the kill.
    before = [m["step"] for m in metrics if m["time"] < lost["time"]]
    assert before and before == list(range(1, len(before) + 1)) and len(before) < STEPS, before
    # Four Ray nodes on one machine are one host: the job is charged one node-second per second.
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert all(e["cluster"]["hosts"] == 1 and e["node_seconds"] == pytest.approx(e["wall_s"]) for e in ledger)
    assert max(e["cluster"]["cpus"] for e in ledger) > max(e["cpus"] for e in ledger)  # the cluster's CPUs, not the stage's


def test_the_evaluation_on_the_cluster_scores_every_sample_once(cluster_run):
    _, run = cluster_run
    for label in (0, 1):  # the start and round 1's policy
        evaluation = run / f"eval_{label}"
        keys = _keys(pd.read_parquet(evaluation / "verified" / "data"))
        assert len(keys) == EVAL_PROBLEMS * EVAL_SAMPLES and set(keys.values()) == {1}
        assert 0 <= json.loads((evaluation / "manifest.json").read_text())["score"]["pass_at_1"] <= 1
