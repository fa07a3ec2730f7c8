"""Run inside a network namespace of its own (`unshare -n`, by test_multinode.py): a four-node local
cluster (fpa_ray.local_cluster: a head without CPUs, a sampler, a verifier and a learner node) and on
it, through `ray job submit`:

1. `placed`: the small offline job, each pool asking for its node's role resource, uninterrupted.
2. `lost`: the same job with the pools placed anywhere on the three worker nodes, and the node
   running the stage's actor SIGKILLed in the middle of generate, verify and train; each lost node
   is replaced once its stage has finished on the others.

What happened is written as JSON: each kill (stage, progress at the kill, what ran on the node), each
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


def follow(cluster, job_id: str, run: Path, triggers: list, replace: bool = True) -> list[dict]:
    """Poll the job until it ends; at each trigger's moment kill the node of the actor it names.
    A trigger is (stage, actor kind, progress function: a value once the moment has come, else None).
    The victim is looked up over and over on a thread of its own, so the kill follows the moment
    within one poll of the moment (a few ms) rather than one state API call (up to seconds on two
    busy cores: a train stage of 3 s had ended before the kill). With `replace`, each lost node is
    replaced once its stage has finished."""
    events, pending, armed, done = [], [], {}, threading.Event()

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
                for stage, spec in list(pending):
                    if stage in finished_stages(run):
                        local_cluster.add_node(cluster, spec)
                        pending.remove((stage, spec))
            target = armed.get(len(events)) if triggers else None
            if target and not target["node"].raylet.is_running():  # found just before the last kill, on its node
                target = None
            moment = triggers[0][2]() if target else None
            if moment is not None:
                stage = triggers.pop(0)[0]
                events.append({"stage": stage, "node_id": target["node"].node_id, "role": target["node"].spec.role,
                               "progress": moment, "actors": target["actors"], "time": time.time()})
                local_cluster.kill_node(cluster, target["node"])
                if replace:
                    pending.append((stage, target["node"].spec))
            time.sleep(0.02)
    finally:
        done.set()
        watcher.join()
    for _, spec in pending:  # the job ended before the stage's entry: bring the cluster back to its size
        local_cluster.add_node(cluster, spec)
    return events


def job_record(cluster, job_id: str) -> dict:
    job = jobs.get(f"{cluster.dashboard}/api/jobs/{job_id}")
    return {"status": job["status"], "driver_node_id": job.get("driver_node_id"),
            "logs": jobs.get(f"{cluster.dashboard}/api/jobs/{job_id}/logs")["logs"]}


def submit(cluster, *command) -> str:
    started = jobs.submit(cluster.env, cluster.dashboard, *command, wait=False)
    return re.search(r"(raysubmit_\w+)", started.stdout + started.stderr).group(1)


def replace_lost(cluster, events: list[dict]) -> None:
    """A new node for each one `events` lost, and wait until the cluster is back to its size."""
    for event in events:
        local_cluster.add_node(cluster, next(s for s in cluster.nodes if s.role == event["role"]))
    wait_for_nodes(cluster)


def wait_for_nodes(cluster) -> None:
    local_cluster.wait_for_nodes(cluster, len(cluster.nodes))


def placed(cluster, runs: Path) -> dict:
    job_id = submit(cluster, "run", "name=placed", f"output_dir={runs}", *SMALL, *PLACED, *TRAIN)
    follow(cluster, job_id, runs / "placed", [])
    time.sleep(2)  # the state API lists an actor that has exited a moment later
    return {"job": job_record(cluster, job_id), "nodes": local_cluster.state(cluster, "nodes"), "actors": local_cluster.state(cluster, "actors")}


def lost(cluster, runs: Path) -> dict:
    run = runs / "lost"
    job_id = submit(cluster, "run", "name=lost", f"output_dir={runs}", *SMALL, *TRAIN, "verifier.batch_size=32")
    samples = run / "round_1" / "samples"
    triggers = [
        ("generate", SAMPLER, lambda: shards(samples) if 0 < shards(samples) < 4 else None),  # 4 shards of 16 prompts
        ("verify", VERIFIER, lambda: (finished_tasks(cluster, VERIFIER) or None) if "generate" in finished_stages(run) else None),
        ("train", TRAINER, lambda: registered_checkpoints(run) or None),
    ]
    events = follow(cluster, job_id, run, triggers)
    return {"events": events, "job": job_record(cluster, job_id)}


def main(out: Path, runs: Path, cache: Path) -> int:
    # A SIGTERM (the test's time limit) ends the run through `finally`: a cluster left behind would go
    # on running its jobs on the test session's cores.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; done so far: {out}"))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    temp_dir = tempfile.mkdtemp(prefix="/tmp/fmn")  # short: Ray's socket paths must fit in 107 bytes
    cluster = local_cluster.start(temp_dir=temp_dir, env={"FPA_RAY_CACHE": str(cache)})
    result, times = {}, {}
    try:
        for name, part in (("placed", lambda: placed(cluster, runs)), ("lost", lambda: lost(cluster, runs))):
            began = time.time()
            result[name] = part()
            times[name] = time.time() - began
            out.write_text(json.dumps({**result, "seconds": times}))  # what is done so far, if a later part hangs
            wait_for_nodes(cluster)
    finally:
        local_cluster.stop(temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(Path, sys.argv[1:4])))
