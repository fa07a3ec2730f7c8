"""The main jobs on a Ray cluster of four nodes on this machine (fpa_ray.local_cluster: a head without
CPUs and a sampler, a verifier and a learner node, each with its own CPUs, object store and role
resource), in a network namespace of its own with only the loopback, submitted with `ray job
submit`, with worker nodes SIGKILLed under them (tests/helpers/multinode_run.py runs it all
once; each test here checks one part of that run; a learner whose node is lost and not replaced is
test_learner.py's LearnerUnschedulable test):

- placed: each pool on its own node and the driver on the head, uninterrupted;
- lost: the node under generate, verify and train killed in turn; each stage ends on the other nodes
  with every sample and verdict exactly once, and training with the weights of the placed run;

A GRPO sampler killed under the loop is test_grpo_layouts.py's (on the session's cluster: the same
controller restarts its pools whether an actor or its node died).
"""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

LIMIT_S = 1500  # s; alone, the run first builds the warm start (~4 min) that earlier tests of a full session built
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
    return json.loads((out / "result.json").read_text()), runs


def _event(part: dict, stage: str) -> dict:
    events = [e for e in part["events"] if e["stage"] == stage]
    assert len(events) == 1, part["events"]  # the moment came while the stage ran: a kill, not a run that ended first
    return events[0]


def _keys(frame: pd.DataFrame) -> Counter:
    return Counter(zip(frame["prompt_id"], frame["sample_index"]))


def _samples(directory: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(directory.glob("shard-*.parquet"))])


def _max_weight_difference(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def _steps(train_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line]


def test_each_pool_runs_on_its_own_node_and_the_driver_on_the_head(cluster_run):
    result, runs = cluster_run
    placed = result["placed"]
    assert placed["job"]["status"] == "SUCCEEDED", placed["job"]["logs"][-3000:]
    roles = {n["node_id"]: next((r.removesuffix("_node") for r in n["resources_total"] if r.endswith("_node")), "head")
             for n in placed["nodes"] if n.get("resources_total")}
    placed_on: dict[str, set[str]] = {}
    for actor in placed["actors"]:
        placed_on.setdefault(actor["class_name"], set()).add(roles[actor["node_id"]])
    samplers = {r for name, rs in placed_on.items() if "SamplerActor" in name for r in rs}
    verifiers = {r for name, rs in placed_on.items() if "VerifierActor" in name for r in rs}
    assert samplers == {"sampler"} and verifiers == {"verifier"}, placed_on  # generation and evaluation alike
    assert placed_on["RayTrainWorker"] == {"learner"}, placed_on
    assert roles[placed["job"]["driver_node_id"]] == "head"
    run = runs / "placed"
    assert [p["point"] for p in json.loads((run / "curve.json").read_text())["points"]] == ["start", "after round 1"]
    assert _steps(run / "round_1" / "train") == list(range(1, STEPS + 1))


def test_a_node_lost_mid_generate_loses_and_duplicates_no_sample(cluster_run):
    result, runs = cluster_run
    lost = _event(result["lost"], "generate")
    assert "SamplerActor" in " ".join(lost["actors"]) and 0 < lost["progress"] < PROMPTS // 16  # shards written at the kill
    assert result["lost"]["job"]["status"] == "SUCCEEDED", result["lost"]["job"]["logs"][-3000:]
    samples = _samples(runs / "lost" / "round_1" / "samples")
    keys = _keys(samples)
    assert len(keys) == PROMPTS * N and set(keys.values()) == {1}  # every prompt its N samples, each once
    assert Counter(samples["prompt_id"]).most_common()[-1][1] == N
    # the same samples as the uninterrupted placed run's (seeded per prompt and index)
    manifest = lambda run: json.loads((runs / run / "round_1" / "samples" / "manifest.json").read_text())["shards"]  # noqa: E731
    assert manifest("lost") == manifest("placed")


def test_a_node_lost_mid_verify_gives_every_sample_exactly_one_verdict(cluster_run):
    result, runs = cluster_run
    lost = _event(result["lost"], "verify")
    assert "VerifierActor" in " ".join(lost["actors"]) and lost["progress"] >= 1  # batches graded before the kill
    verified = pd.read_parquet(runs / "lost" / "round_1" / "verified" / "data")
    keys = _keys(verified)
    assert len(keys) == PROMPTS * N and set(keys.values()) == {1}
    placed = pd.read_parquet(runs / "placed" / "round_1" / "verified" / "data")
    rewards = lambda frame: dict(zip(zip(frame["prompt_id"], frame["sample_index"]), frame["reward"]))  # noqa: E731
    assert rewards(verified) == rewards(placed)


def test_a_node_lost_mid_train_resumes_to_the_weights_of_the_uninterrupted_run(cluster_run):
    """The two runs train on the same dataset (the same samples and verdicts, asserted above); `lost` lost its
    learner's node after a checkpoint and restarted in the job, `placed` ran through."""
    result, runs = cluster_run
    lost = _event(result["lost"], "train")
    assert "RayTrainWorker" in lost["actors"]
    train, other = runs / "lost" / "round_1" / "train", runs / "placed" / "round_1" / "train"
    assert _steps(train) == list(range(1, STEPS + 1))  # each step logged once
    assert json.loads((runs / "lost" / "round_1" / "dataset" / "manifest.json").read_text())["sha256"] == \
        json.loads((runs / "placed" / "round_1" / "dataset" / "manifest.json").read_text())["sha256"]
    # Four Ray nodes on one machine are one host: the job is charged one node-second per second.
    ledger = [json.loads(line) for line in (runs / "lost" / "ledger.jsonl").read_text().splitlines()]
    assert all(e["cluster"]["hosts"] == 1 and e["node_seconds"] == pytest.approx(e["wall_s"]) for e in ledger)
    assert max(e["cluster"]["cpus"] for e in ledger) > max(e["cpus"] for e in ledger)  # the cluster's CPUs, not the stage's
    assert _max_weight_difference(train / "policy", other / "policy") <= 1e-6
    losses = lambda d: [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines() if line]  # noqa: E731
    assert losses(train) == pytest.approx(losses(other), rel=1e-6)


def test_the_evaluation_on_the_cluster_scores_every_sample_once(cluster_run):
    _, runs = cluster_run
    for label in (0, 1):  # the start and round 1's policy
        evaluation = runs / "lost" / f"eval_{label}"
        keys = _keys(pd.read_parquet(evaluation / "verified" / "data"))
        assert len(keys) == EVAL_PROBLEMS * EVAL_SAMPLES and set(keys.values()) == {1}
        score = json.loads((evaluation / "manifest.json").read_text())["score"]
        assert score == json.loads((runs / "placed" / f"eval_{label}" / "manifest.json").read_text())["score"]
