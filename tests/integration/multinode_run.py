"""Run inside a network namespace of its own (`unshare -n`, by test_multinode.py): a four-node
local cluster, the small offline main job submitted to it with each pool asking for its node's
role resource, and what the dashboard's state API says of nodes, actors and the job, as JSON.

    python -m tests.integration.multinode_placement OUT.json RUNS_DIR CACHE_DIR
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fpa_ray import local_cluster
from tests.integration import jobs
from tests.integration.small_run import SMALL

PLACED = ["sampler.resources={sampler_node: 1}", "verifier.resources={verifier_node: 1}", "learner.resources={learner_node: 1}"]


def main(out: Path, runs: Path, cache: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    temp_dir = tempfile.mkdtemp(prefix="/tmp/fmn")  # short: Ray's socket paths must fit in 107 bytes
    cluster = local_cluster.start(temp_dir=temp_dir, env={"FPA_RAY_CACHE": str(cache)})
    try:
        done = jobs.submit(cluster.env, cluster.dashboard, "run", "name=placed", f"output_dir={runs}", *SMALL, *PLACED)
        found = re.search(r"(raysubmit_\w+)", done.stdout + done.stderr)
        time.sleep(2)  # the state API lists an actor that has exited a moment later
        result = {"returncode": done.returncode, "output": (done.stdout + done.stderr)[-4000:],
                  "job": jobs.get(f"{cluster.dashboard}/api/jobs/{found.group(1)}") if found else None,
                  "nodes": local_cluster.state(cluster, "nodes"), "actors": local_cluster.state(cluster, "actors")}
    finally:
        local_cluster.stop(temp_dir)
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(Path, sys.argv[1:4])))
