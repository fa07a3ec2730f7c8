"""The offline pipeline, killed and resumed, on the session's real local Ray cluster. The whole run's
records (report, curve, manifests, ledger, reuse) are checked on the `ray job submit` run of the same
reduced config in test_job_submit.py, which is one run instead of two."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.small_run import overrides as _overrides

pytestmark = pytest.mark.slow


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
