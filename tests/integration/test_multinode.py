"""The offline main job on a Ray cluster of four nodes on this machine (fpa_ray.local_cluster: a
head and a sampler, a verifier and a learner node, each with its own CPUs, object store and role
resource), in a network namespace of its own with only the loopback, submitted with `ray job
submit`: each pool runs on its own node and the driver on the head."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare -n` (root, or user namespaces) for a loopback-only multi-node cluster")
    out, runs = tmp_path_factory.mktemp("multinode"), tmp_path_factory.mktemp("multinode-runs")
    cache = tmp_path_factory.getbasetemp() / "pipeline-cache"  # the session's warm start
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "tests.integration.multinode_placement", str(out / "result.json"),
                           str(runs), str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((out / "result.json").read_text()), runs / "placed"


def test_each_pool_runs_on_its_own_node_and_the_driver_on_the_head(placed):
    result, run = placed
    assert result["returncode"] == 0, result["output"]
    nodes = {n["node_id"]: n for n in result["nodes"]}
    assert len(nodes) == 4 and all(n["state"] == "ALIVE" for n in nodes.values())

    def role(node_id: str) -> str:
        return next(r.removesuffix("_node") for r in nodes[node_id]["resources_total"] if r.endswith("_node"))

    placed_on: dict[str, set[str]] = {}
    for actor in result["actors"]:
        placed_on.setdefault(actor["class_name"], set()).add(role(actor["node_id"]))
    samplers = {r for name, roles in placed_on.items() if "SamplerActor" in name for r in roles}
    verifiers = {r for name, roles in placed_on.items() if "VerifierActor" in name for r in roles}
    assert samplers == {"sampler"} and verifiers == {"verifier"}, placed_on  # generation and evaluation alike
    assert placed_on["RayTrainWorker"] == {"learner"}, placed_on
    assert role(result["job"]["driver_node_id"]) == "head"
    assert [p["point"] for p in json.loads((run / "curve.json").read_text())["points"]] == ["start", "after round 1"]
    stages = {json.loads(line)["stage"] for line in (run / "ledger.jsonl").read_text().splitlines()}
    assert stages >= {"generate", "verify", "build", "train", "eval_generate", "eval_verify"}
