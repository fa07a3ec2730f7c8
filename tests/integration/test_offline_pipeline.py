"""The offline pipeline end to end at a reduced size, on the session's real local Ray cluster."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from fpa_ray.config import load_config
from fpa_ray.evaluation import score
from fpa_ray.pipelines.offline import OfflinePipeline, StageInputsChanged
from tests.integration.small_run import overrides as _overrides

pytestmark = pytest.mark.slow

def test_default_pipeline_end_to_end(ray_cluster, tmp_path, cache):
    logs: list[str] = []
    config = load_config("tiny-cpu", _overrides(tmp_path, extra=["learner.snapshot_every=2"]))
    report = OfflinePipeline(config, log=logs.append).run()
    run = report.parent
    text = report.read_text()
    assert "| start |" in text and "| round 1 step 2 |" in text and "| after round 1 |" in text and "CPU-hours" in text

    # The accuracy curve: the start costs nothing, the snapshot part of the training, the end all of it.
    points = json.loads((run / "curve.json").read_text())["points"]
    assert [p["point"] for p in points] == ["start", "round 1 step 2", "after round 1"]
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    training = sum(e["cpu_seconds"] for e in ledger if e["stage"] in ("generate", "verify", "build", "train")) / 3600
    assert points[0]["cpu_hours"] == 0 < points[1]["cpu_hours"] < points[2]["cpu_hours"] == pytest.approx(training)

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
    for entry in ledger:
        assert entry["wall_s"] > 0 and entry["cpu_seconds"] == pytest.approx(entry["cpus"] * entry["wall_s"]) and entry["completed"]
    assert (run / "config.yaml").read_text() == config.to_yaml()

    # The same run again: every stage is reused, nothing is recomputed.
    logs.clear()
    OfflinePipeline(config, log=logs.append).run()
    reused = {line.split("]")[0].strip("[") for line in logs if "done earlier: reusing it" in line}
    assert reused == {"eval_0", "round_1/samples", "round_1/verified", "round_1/dataset", "round_1/train", "eval_1_step_2", "eval_1"}
    assert not any(line.startswith("[train] ") and "steps" in line for line in logs)

    changed = load_config("tiny-cpu", _overrides(tmp_path, extra=["fpa.lam=2"]))
    with pytest.raises(StageInputsChanged, match="was made with another config"):
        OfflinePipeline(changed, log=logs.append).run()


def test_a_killed_driver_resumes_without_redoing_finished_stages(ray_cluster, tmp_path, cache):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "fpa_ray.main", "run", *_overrides(tmp_path, name="resumed")]
    run = tmp_path / "runs" / "resumed"
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    samples_manifest = run / "round_1" / "samples" / "manifest.json"
    while time.time() < deadline and first.poll() is None:
        if samples_manifest.exists() and json.loads(samples_manifest.read_text()).get("complete"):
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-3000:]
    os.kill(first.pid, signal.SIGKILL)  # mid-round: generation done, verification under way or next
    first.wait()
    shards = {p: p.stat().st_mtime_ns for p in (run / "round_1" / "samples").glob("shard-*.parquet")}
    assert len(shards) == 4
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[round_1/samples] done earlier: reusing it" in second.stdout
    assert "[eval_0] done earlier: reusing it" in second.stdout
    assert all(p.stat().st_mtime_ns == m for p, m in shards.items())
    assert (run / "report.md").exists() and "after round 1" in (run / "report.md").read_text()
