"""`ray job submit` to a locally started head (`ray start --head`, dashboard on 127.0.0.1): the
offline main job, its driver killed mid-round and the same job submitted again, which resumes; the
GRPO job read back through the dashboard's HTTP API and the node's Prometheus metrics endpoint; the
GRPO run's own records, and `compare` of the two runs."""

import json
import os
import re
import struct
import subprocess
import tempfile
import time

import pandas as pd
import psutil
import pytest
import yaml

from fpa_ray.cluster import LOCAL_RAY_ENV
from fpa_ray.config import load_config
from fpa_ray.evaluation import score
from fpa_ray.local_cluster import free_port, stop
from fpa_ray.main import main
from fpa_ray.metrics import SPECS
from fpa_ray.pipelines.offline import OfflinePipeline
from fpa_ray.pool_stages import manifest_digest
from fpa_ray.run_directory import StageInputsChanged
from tests.helpers import jobs
from tests.helpers.small_run import GRPO_SMALL, SMALL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head on loopback ports: (dashboard URL, Prometheus endpoint URL, environment for `ray job`)."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's socket paths must fit in 107 bytes
    dashboard, metrics = free_port(), free_port()
    env = {**os.environ, **LOCAL_RAY_ENV, "FPA_RAY_CACHE": str(tmp_path_factory.getbasetemp() / "pipeline-cache")}
    env.pop("RAY_ADDRESS", None)
    start = [
        str(jobs.RAY), "start", "--head", "--num-cpus=4", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={metrics}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}/metrics", env
    finally:
        stop(temp_dir)


@pytest.fixture(scope="module")
def offline_job(head, tmp_path_factory):
    """The offline main job, its driver SIGKILLed once round 1's samples are written, then submitted
    again and waited for: the first attempt's logs and shard files, and the second's streamed output."""
    dashboard, _, env = head
    runs = tmp_path_factory.mktemp("jobs")
    run = runs / "submitted"
    started = time.time()
    first = jobs.submit(env, dashboard, "run", *_offline_overrides(runs), wait=False)
    job_id = re.search(r"(raysubmit_\w+)", first.stdout + first.stderr).group(1)
    samples = run / "round_1" / "samples" / "manifest.json"
    deadline = time.time() + 900
    while time.time() < deadline and not (samples.exists() and json.loads(samples.read_text()).get("complete")):
        assert jobs.get(f"{dashboard}/api/jobs/{job_id}")["status"] in ("PENDING", "RUNNING"), jobs.get(f"{dashboard}/api/jobs/{job_id}/logs")["logs"][-3000:]
        time.sleep(0.2)
    drivers = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[1:3] == ["-m", "fpa_ray.main"]
               and f"output_dir={runs}" in p.info["cmdline"]]
    assert len(drivers) == 1, drivers
    drivers[0].kill()  # mid-round: generation done, verification under way or next
    deadline = time.time() + 120
    while time.time() < deadline and jobs.get(f"{dashboard}/api/jobs/{job_id}")["status"] in ("PENDING", "RUNNING"):
        time.sleep(0.5)
    killed = {"status": jobs.get(f"{dashboard}/api/jobs/{job_id}")["status"], "logs": jobs.get(f"{dashboard}/api/jobs/{job_id}/logs")["logs"],
              "shards": {p: p.stat().st_mtime_ns for p in (run / "round_1" / "samples").glob("shard-*.parquet")}}
    submit = jobs.submit(env, dashboard, "run", *_offline_overrides(runs))
    return submit, run, started, killed


def _offline_overrides(runs) -> list[str]:
    return ["name=submitted", f"output_dir={runs}", *SMALL, "learner.snapshot_every=2", "tracking.trackers=[tensorboard, mlflow]",
            # a dev split to choose on, a test split to report
            "data.eval=[{name: synthetic, split: dev, limit: 8, label: dev}, {name: synthetic, split: test, limit: 8, label: test}]"]


@pytest.fixture(scope="module")
def grpo_job(head, tmp_path_factory):
    """The GRPO job, submitted without waiting and followed through the dashboard and the metrics endpoint."""
    dashboard, prometheus, env = head
    runs = tmp_path_factory.mktemp("jobs")
    submit = jobs.submit(env, dashboard, "grpo", "name=grpo-job", f"output_dir={runs}", *SMALL, *GRPO_SMALL,
                         "tracking.trackers=[tensorboard, wandb]", "tracking.wandb_mode=offline", wait=False)
    job_id = re.search(r"(raysubmit_\w+)", submit.stdout + submit.stderr).group(1)
    seen: set[str] = set()
    deadline = time.time() + 1200
    while time.time() < deadline:  # scrape the node's metrics endpoint while the job runs
        seen |= set(re.findall(r"^(ray_fpa_ray_\w+?)(?:_total)?\{", jobs.get(prometheus), re.M))
        status = jobs.get(f"{dashboard}/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = jobs.get(f"{dashboard}/api/jobs/{job_id}/logs")["logs"]
    actors = jobs.get(f"{dashboard}/api/v0/actors?limit=10000")["data"]["result"]["result"]
    return {"status": status, "logs": logs, "metrics": seen, "actors": actors, "run": runs / "grpo-job"}


def test_a_killed_job_resubmitted_resumes_without_redoing_finished_stages(offline_job):
    submit, run, started, killed = offline_job
    assert killed["status"] == "FAILED", killed["logs"][-3000:]
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-4000:]
    assert "succeeded" in output
    for progress in ("[warmstart]", "[generate]", "[verify]", "[build]", "[train]", "[evaluate]"):
        assert progress in killed["logs"] + output, progress  # the jobs' logs stream back with their progress
    assert "[round_1/samples] done earlier: reusing it" in output
    assert "[generate]" not in output
    assert len(killed["shards"]) == 4 and all(p.stat().st_mtime_ns == m for p, m in killed["shards"].items())
    report = run / "report.md"
    assert report.exists() and report.stat().st_mtime > started and "after round 1" in report.read_text()


def test_the_submitted_run_is_complete_consistent_and_reused(offline_job, ray_cluster, cache):
    """The main job's run directory, end to end: report, accuracy curve, manifests, ledger, then a rerun that reuses every stage."""
    submit, run, _, _ = offline_job
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    logs: list[str] = []
    config = load_config("tiny-cpu", _offline_overrides(run.parent))
    report = run / "report.md"
    text = report.read_text()
    assert "| start |" in text and "| round 1 step 2 |" in text and "| after round 1 |" in text and "training CPU-hours used" in text

    # The accuracy curve: the start costs nothing, the snapshot part of the training, the end all of it.
    points = json.loads((run / "curve.json").read_text())["points"]
    assert [p["point"] for p in points] == ["start", "round 1 step 2", "after round 1"]
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    training = sum(e["cpu_seconds"] for e in ledger if e["stage"] in ("generate", "verify", "build", "train")) / 3600
    assert points[0]["cpu_hours"] == 0 < points[1]["cpu_hours"] < points[2]["cpu_hours"] == pytest.approx(training)
    # The cost basis runs are compared on: the whole cluster (one host here) for every second of those stages.
    wall = sum(e["wall_s"] for e in ledger if e["stage"] in ("generate", "verify", "build", "train")) / 3600
    assert points[0]["node_hours"] == 0 < points[1]["node_hours"] < points[2]["node_hours"] == pytest.approx(wall)
    for point in points:  # each split scored on its own 8 problems; together they are the run's 16
        dev, test = point["benchmarks"]["dev"], point["benchmarks"]["test"]
        assert dev["problems"] == test["problems"] == 8 and point["pass_at_1"] == pytest.approx((dev["pass_at_1"] + test["pass_at_1"]) / 2)
        assert test["vs_start"] == pytest.approx(test["pass_at_1"] - points[0]["benchmarks"]["test"]["pass_at_1"])
    assert "| dev pass@1 | vs start (SE) | test pass@1 |" in text
    per_problem = json.loads((run / "per_problem.json").read_text())["points"]  # what a bootstrap over problems resamples
    assert [p["point"] for p in per_problem] == [p["point"] for p in points]
    for point, problems in zip(points, per_problem):
        assert point["benchmarks"]["test"]["pass_at_1"] == pytest.approx(sum(problems["benchmarks"]["test"].values()) / 8)

    samples = json.loads((run / "round_1" / "samples" / "manifest.json").read_text())
    verified = json.loads((run / "round_1" / "verified" / "manifest.json").read_text())
    dataset = json.loads((run / "round_1" / "dataset" / "manifest.json").read_text())
    assert samples["rows"] == 64 * 8 and samples["complete"]
    assert verified["checks"] == 512 == sum(verified["by_status"].values())
    counts = dataset["counts"]
    assert counts["prompts"] == 64 == counts.get("prompts_all_correct", 0) + counts.get("prompts_all_incorrect", 0) + counts["prompts_mixed"]
    assert dataset["rows"] == counts["pairs"] <= min(4 * counts["prompts_mixed"], counts["pairs_possible"])
    frame = pd.read_parquet(run / "round_1" / "dataset" / "data.parquet")
    assert len(frame) == dataset["rows"] and {"prompt", "chosen", "rejected", "chosen_token_ids"} <= set(frame.columns)
    assert dataset["policy"] and dataset["sampling"]["n"] == 8 and dataset["graders"][0].startswith("math_verify==")

    for round_index in (0, 1):  # accuracy numbers come from the verifier's own rows
        manifest = json.loads((run / f"eval_{round_index}" / "manifest.json").read_text())
        recomputed = score(pd.read_parquet(run / f"eval_{round_index}" / "verified" / "data"))
        assert manifest["score"]["pass_at_1"] == pytest.approx(recomputed["pass_at_1"]) and recomputed["problems"] == 16
        assert f"{recomputed['pass_at_1']:.1%}" in text

    assert {e["stage"] for e in ledger} >= {"warmstart", "generate", "verify", "build", "train", "eval_generate", "eval_verify"}
    for stage in ("eval_generate", "eval_verify"):  # the start, the round's snapshot and final policy: one sampler pool, one verifier pool
        assert [e["round"] for e in ledger if e["stage"] == stage] == ["0,1_step_2,1"]
    for entry in ledger:
        assert entry["wall_s"] > 0 and entry["cpu_seconds"] == pytest.approx(entry["cpus"] * entry["wall_s"]) and entry["completed"]
        assert entry["cluster"] == {"hosts": 1, "cpus": 4.0, "gpus": 0.0} and entry["node_seconds"] == pytest.approx(entry["wall_s"])
    assert (run / "config.yaml").read_text() == config.to_yaml()

    # The same figures in MLflow (its file store beside the runs), read back through MLflow's own client.
    from fpa_ray.tracking import TrackingRun

    tracked = TrackingRun(config.tracking, config.name, str(run.parent), json.loads((run / "tracking.json").read_text()))
    client = tracked.mlflow_client()
    history = lambda key: sorted((m.step, m.value) for m in client.get_metric_history(tracked.ids["mlflow"], key))  # noqa: E731
    train_metrics = [json.loads(line) for line in (run / "round_1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert history("round_1/loss") == [(m["step"], pytest.approx(m["loss"])) for m in train_metrics]  # from the learner's rank 0
    assert history("eval/pass_at_1") == [(i, pytest.approx(p["pass_at_1"])) for i, p in enumerate(points)]
    assert history("eval/node_hours")[-1][1] == pytest.approx(points[-1]["node_hours"])
    assert history("cost/train/node_hours") == [(0, pytest.approx(sum(e["node_seconds"] for e in ledger if e["stage"] == "train") / 3600))]
    assert client.get_run(tracked.ids["mlflow"]).data.params["objective.name"] == "rpo"

    # The same run again: every stage is reused, nothing is recomputed.
    logs.clear()
    OfflinePipeline(config, log=logs.append).run()
    reused = {line.split("]")[0].strip("[") for line in logs if "done earlier: reusing it" in line}
    assert reused == {"eval_0", "round_1/samples", "round_1/verified", "round_1/dataset", "round_1/train", "eval_1_step_2", "eval_1"}
    assert not any(line.startswith("[train] ") and "steps" in line for line in logs)

    # The directory as an fpa_ray from before verifier.max_failure_share existed would have left it: the
    # setting absent from config.yaml and from every stage's recorded inputs. This one, at its default, resumes it.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["verifier"]["max_failure_share"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    older = 0
    for path in run.rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        verifier = (manifest.get("inputs") or {}).get("verifier")
        if isinstance(verifier, dict) and verifier.pop("max_failure_share", None) is not None:
            path.write_text(json.dumps(manifest))
            older += 1
    assert older >= 4  # round 1's verify stage and the three evaluations
    for stage, upstream in (("dataset", "verified"), ("train", "dataset")):  # the digests such a run chained from them
        path = run / "round_1" / stage / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["inputs"][upstream] = manifest_digest(run / "round_1" / upstream)
        path.write_text(json.dumps(manifest))
    stricter = load_config("tiny-cpu", [*_offline_overrides(run.parent), "verifier.max_failure_share=0.2"])
    with pytest.raises(StageInputsChanged, match=r"another config \(verifier\.max_failure_share;"):  # the old run had its default
        OfflinePipeline(stricter, log=logs.append).run()
    logs.clear()
    OfflinePipeline(config, log=logs.append).run()
    assert {line.split("]")[0].strip("[") for line in logs if "done earlier: reusing it" in line} == reused

    changed = load_config("tiny-cpu", [*_offline_overrides(run.parent), "fpa.lam=1"])  # the default is 2
    with pytest.raises(StageInputsChanged, match=r"another config \(fpa\.lam;"):
        OfflinePipeline(changed, log=logs.append).run()


def test_the_dashboard_shows_the_grpo_job_its_named_actors_and_metrics(grpo_job):
    assert grpo_job["status"] == "SUCCEEDED", grpo_job["logs"][-4000:]
    assert "[grpo] step 3/3" in grpo_job["logs"] and "[evaluate]" in grpo_job["logs"]
    names = {actor.get("name") for actor in grpo_job["actors"]}
    assert {"grpo-job-sampler-0", "grpo-job-verifier-0", "grpo-job-rollout-controller"} <= names
    expected = {f"ray_{name}" for name in SPECS} - {"ray_fpa_ray_c_w", "ray_fpa_ray_c_l"}  # GRPO has no C_w/C_l
    assert expected <= grpo_job["metrics"], sorted(expected - grpo_job["metrics"])


def test_the_grpo_run_updates_on_policy_first_and_charges_every_second(grpo_job):
    assert grpo_job["status"] == "SUCCEEDED", grpo_job["logs"][-4000:]
    run = grpo_job["run"]
    report = (run / "report.md").read_text()
    assert "| step 2 |" in report and "| step 3 |" in report

    metrics = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and [m["rollout_step"] for m in metrics] == [1, 1, 2, 2, 3, 3]
    # 64 samples per rollout, 32 per optimizer step: the first update of each rollout starts on-policy
    # (the recomputed log-probs of the sampling policy equal the learner's), the second does not.
    assert any(m["grad_norm"] > 0 for m in metrics[0::2]), "no rollout had a group with both right and wrong answers"
    for first, second in zip(metrics[0::2], metrics[1::2]):
        assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and first["clip_fraction"] == 0
        if first["grad_norm"] > 0:  # a rollout whose groups all tie has no gradient, and the policy stays put
            assert second["ratio"] != pytest.approx(1.0, abs=1e-7)

    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    loop = sorted((e for e in ledger if e["stage"].startswith("grpo_")), key=lambda e: e["start"])
    assert loop[0]["stage"] == "grpo_startup" and loop[-1]["stage"] == "grpo_shutdown"
    for before, after in zip(loop, loop[1:]):  # phases tile the loop: no second goes uncharged
        assert after["start"] == pytest.approx(before["end"], abs=1e-6)
    for step in range(3):
        assert {e["stage"] for e in loop if e["round"] == step} >= {"grpo_generate", "grpo_verify", "grpo_train"}
        assert any(e["stage"] == "grpo_sync" and e["round"] == step + 1 for e in loop)
    assert all(e["cpus"] == 4 and e["gpus"] == 0 for e in loop)  # 1 sampler + 1 verifier + 2 learner CPUs, held throughout
    assert all(e["cluster"]["hosts"] == 1 and e["node_seconds"] == pytest.approx(e["wall_s"]) for e in loop)  # charged from the controller too

    for stage in ("eval_generate", "eval_verify"):  # the start and both snapshots, after training, in one stage each
        assert [e["round"] for e in ledger if e["stage"] == stage] == ["0,step_2,step_3"]
    curve = json.loads((run / "curve.json").read_text())
    assert [p["point"] for p in curve["points"]] == ["start", "step 2", "step 3"]
    hours = [p["cpu_hours"] for p in curve["points"]]
    assert hours[0] == 0 < hours[1] < hours[2] <= sum(e["cpu_seconds"] for e in loop) / 3600
    assert curve["points"][2]["node_hours"] == pytest.approx(hours[2] / 4)  # the loop held the whole cluster: its 4 CPUs
    assert (run / "online" / "snapshots" / "step_2" / "config.json").exists()
    # W&B offline: the driver (config, curve, cost) and the learner's rank 0 (grpo/ metrics) logged into one run id.
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]
    offline = list((run.parent / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) >= 3 and all(next(d.glob("*.wandb")).stat().st_size > 0 for d in offline)


def test_compare_the_grpo_run_with_the_offline_run(grpo_job, offline_job, tmp_path, capsys):
    run, offline = grpo_job["run"], offline_job[1]
    out = tmp_path / "compare"
    assert main(["compare", str(run), str(offline), "--out", str(out), "--target", "0"]) == 0
    table = (out / "compare.md").read_text()
    for name, directory in (("grpo-job", run), ("submitted", offline)):
        final = json.loads((directory / "curve.json").read_text())["points"][-1]
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"{final['pass_at_1']:.1%}" in row and row.endswith(f"| {final['node_hours']:.4f} | 0.0000 | {final['cpu_hours']:.4f} |")
        # target 0% is reached at the start, before any training
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (840, 540)
