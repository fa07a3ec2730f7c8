"""Run inside a network namespace of its own (`unshare -n`, by test_multinode.py): a four-node local
cluster (fpa_ray.local_cluster: a head without CPUs, a sampler, a verifier and a learner node) and on
it, through `ray job submit`, the small offline job with each pool asking for its node's role
resource, and the node running the stage's actor SIGKILLed in the middle of generate, verify and
train; each lost node is replaced at once (as KubeRay starts a new pod), and its pool goes on there.

What happened is written as JSON: each kill (stage, progress at the kill, what ran on the node), the
job's status and logs, and the state API's nodes and actors (dead ones included).

    python -m tests.helpers.multinode_run OUT.json RUNS_DIR CACHE_DIR
"""

import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fpa_ray import local_cluster
from tests.helpers import jobs
from tests.helpers.small_run import SMALL

PLACED = ["sampler.resources={sampler_node: 1}", "verifier.resources={verifier_node: 1}", "learner.resources={learner_node: 1}"]
# Twenty steps of ~0.15 s with a checkpoint every two: a node lost mid-train leaves one to resume from.
TRAIN = ["learner.max_steps=20", "learner.checkpoint_every=2"]
RUN = "lost-nodes"  # the run directory's name under RUNS_DIR
SAMPLER, VERIFIER, TRAINER = "SamplerActor", "VerifierActor", "RayTrainWorker"


def finished_stages(run: Path) -> set[str]:
    ledger = run / "ledger.jsonl"
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return {entry["stage"] for entry in map(json.loads, lines) if entry["completed"]}


def finished_tasks(cluster, kind: str) -> int:
    return sum(1 for t in local_cluster.state(cluster, "tasks") if kind in t.get("name", "") and t.get("state") == "FINISHED")


def registered_checkpoints(run: Path) -> int:
    """Checkpoints Ray Train has recorded (its controller's snapshot): a checkpoint_* directory appears
    before that, and a node lost in between leaves one that a restart does not resume from."""
    snapshots = list((run / "round_1" / "train" / "ray_train").glob("*/checkpoint_manager_snapshot.json"))
    try:
        return sum(len(json.loads(path.read_text())["checkpoint_results"]) for path in snapshots)
    except (OSError, ValueError):  # being written
        return 0


def shards(directory: Path) -> int:
    return len(list(directory.glob("shard-*.parquet")))


def victim(cluster, kind: str) -> dict | None:
    """The node running an alive actor of `kind` (a class name's part), ready to be killed, and what else runs there."""
    actors = [a for a in local_cluster.state(cluster, "actors") if a["state"] == "ALIVE"]
    chosen = next((a for a in actors if kind in a["class_name"]), None)
    if chosen is None:
        return None
    try:
        node = local_cluster.worker_node(cluster, chosen["node_id"])
    except (StopIteration, LookupError):  # the node went away between the two state calls
        return None
    return {"node": node, "actors": sorted(a["class_name"] for a in actors if a["node_id"] == node.node_id)}


def follow(cluster, job_id: str, triggers: list) -> list[dict]:
    """Poll the job until it ends; at each trigger's moment kill the node of the actor it names and
    start its replacement. A trigger is (stage, actor kind, progress function: a value once the moment
    has come, else None). The victim is looked up over and over on a thread of its own, so the kill
    follows the moment within one poll of the moment (a few ms) rather than one state API call (up to
    seconds on two busy cores: a train stage of 3 s had ended before the kill). The replacement starts
    on a thread too: `ray start` takes seconds, and the next stage's moment must not wait for it."""
    events, armed, done, replacements = [], {}, threading.Event(), []

    def watch():
        while not done.is_set():
            if triggers:
                kills = len(events)  # a victim found for this trigger, not for one whose node is gone
                armed[kills] = victim(cluster, triggers[0][1])
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    checked = 0.0
    try:
        while True:
            if time.time() - checked > 0.5:
                if jobs.get(f"{cluster.dashboard}/api/jobs/{job_id}")["status"] not in ("PENDING", "RUNNING"):
                    break
                checked = time.time()
            target = armed.get(len(events)) if triggers else None
            if target and not target["node"].raylet.is_running():  # found just before the last kill, on its node
                target = None
            moment = triggers[0][2]() if target else None
            if moment is not None:
                stage = triggers.pop(0)[0]
                events.append({"stage": stage, "node_id": target["node"].node_id, "role": target["node"].spec.role,
                               "progress": moment, "actors": target["actors"], "time": time.time()})
                local_cluster.kill_node(cluster, target["node"])
                replacement = threading.Thread(target=local_cluster.add_node, args=(cluster, target["node"].spec))
                replacement.start()
                replacements.append(replacement)
            time.sleep(0.02)
    finally:
        done.set()
        watcher.join()
        for replacement in replacements:
            replacement.join()
    return events


def job_record(cluster, job_id: str) -> dict:
    job = jobs.get(f"{cluster.dashboard}/api/jobs/{job_id}")
    return {"status": job["status"], "driver_node_id": job.get("driver_node_id"),
            "logs": jobs.get(f"{cluster.dashboard}/api/jobs/{job_id}/logs")["logs"]}


def submit(cluster, *command) -> str:
    started = jobs.submit(cluster.env, cluster.dashboard, *command, wait=False)
    return re.search(r"(raysubmit_\w+)", started.stdout + started.stderr).group(1)


def run_job(cluster, runs: Path) -> dict:
    run = runs / RUN
    job_id = submit(cluster, "run", f"name={RUN}", f"output_dir={runs}", *SMALL, *PLACED, *TRAIN, "verifier.batch_size=32")
    samples = run / "round_1" / "samples"
    triggers = [
        ("generate", SAMPLER, lambda: shards(samples) if 0 < shards(samples) < 4 else None),  # 4 shards of 16 prompts
        ("verify", VERIFIER, lambda: (finished_tasks(cluster, VERIFIER) or None) if "generate" in finished_stages(run) else None),
        ("train", TRAINER, lambda: registered_checkpoints(run) or None),
    ]
    events = follow(cluster, job_id, triggers)
    time.sleep(2)  # the state API lists an actor that has exited a moment later
    return {"events": events, "job": job_record(cluster, job_id), "nodes": local_cluster.state(cluster, "nodes"),
            "actors": local_cluster.state(cluster, "actors")}


def main(out: Path, runs: Path, cache: Path) -> int:
    # A SIGTERM (the test's time limit) ends the run through `finally`: a cluster left behind would go
    # on running its jobs on the test session's cores.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; done so far: {out}"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    temp_dir = tempfile.mkdtemp(prefix="/tmp/fmn")  # short: Ray's socket paths must fit in 107 bytes
    cluster = local_cluster.start(temp_dir=temp_dir, env={"FPA_RAY_CACHE": str(cache)})
    try:
        began = time.time()
        result = run_job(cluster, runs)
        out.write_text(json.dumps({**result, "seconds": time.time() - began}))
    finally:
        local_cluster.stop(temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(Path, sys.argv[1:4])))
