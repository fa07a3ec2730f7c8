"""`ray job submit` to a locally started head (`ray start --head`, dashboard on 127.0.0.1): the
offline main job, and the GRPO job read back through the dashboard's HTTP API and the node's
Prometheus metrics endpoint."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from fpa_ray.cluster import LOCAL_RAY_ENV
from fpa_ray.metrics import SPECS
from tests.integration.small_run import SMALL
from tests.integration.test_online_grpo import GRPO_SMALL

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_head(temp_dir: str) -> None:
    """Stop only this head's processes (`ray stop` would stop every cluster on the machine)."""
    victims = []
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (process.info["cmdline"] or [])):
            victims.append(process)
    for process in victims:
        process.kill()
    psutil.wait_procs(victims, timeout=30)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head on loopback ports: (dashboard URL, Prometheus endpoint URL, environment for `ray job`)."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's socket paths must fit in 107 bytes
    dashboard, metrics = _free_port(), _free_port()
    env = {**os.environ, **LOCAL_RAY_ENV, "FPA_RAY_CACHE": str(tmp_path_factory.getbasetemp() / "pipeline-cache")}
    env.pop("RAY_ADDRESS", None)
    start = [
        str(RAY), "start", "--head", "--num-cpus=4", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={metrics}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}/metrics", env
    finally:
        _stop_head(temp_dir)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if body.startswith(("{", "[")) else body


def test_ray_job_submit_runs_the_main_job(head, tmp_path):
    dashboard, _, env = head
    overrides = ["name=submitted", f"output_dir={tmp_path / 'runs'}", *SMALL]
    started = time.time()
    submit = subprocess.run(
        [str(RAY), "job", "submit", "--address", dashboard, "--", sys.executable, "-m", "fpa_ray.main", "run", *overrides],
        env=env, capture_output=True, text=True, timeout=1500,
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-4000:]
    assert "succeeded" in output
    for progress in ("[warmstart]", "[generate]", "[verify]", "[build]", "[train]", "[evaluate]"):
        assert progress in output, progress  # the job's logs stream back with its progress
    report = tmp_path / "runs" / "submitted" / "report.md"
    assert report.exists() and report.stat().st_mtime > started


def test_the_dashboard_shows_the_grpo_job_its_named_actors_and_metrics(head, tmp_path):
    dashboard, prometheus, env = head
    overrides = ["name=grpo-job", f"output_dir={tmp_path / 'runs'}", *SMALL, *GRPO_SMALL, "grpo.steps=4"]
    submit = subprocess.run(
        [str(RAY), "job", "submit", "--no-wait", "--address", dashboard, "--", sys.executable, "-m", "fpa_ray.main", "grpo", *overrides],
        env=env, capture_output=True, text=True, timeout=120,
    )
    job_id = re.search(r"(raysubmit_\w+)", submit.stdout + submit.stderr).group(1)
    seen: set[str] = set()
    deadline = time.time() + 1200
    while time.time() < deadline:  # scrape the node's metrics endpoint while the job runs
        seen |= set(re.findall(r"^(ray_fpa_ray_\w+?)(?:_total)?\{", _get(prometheus), re.M))
        status = _get(f"{dashboard}/api/jobs/{job_id}")["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = _get(f"{dashboard}/api/jobs/{job_id}/logs")["logs"]
    assert status == "SUCCEEDED", logs[-4000:]
    assert "[grpo] step 4/4" in logs and "[evaluate]" in logs

    actors = _get(f"{dashboard}/api/v0/actors?limit=10000")["data"]["result"]["result"]
    names = {actor.get("name") for actor in actors}
    assert {"grpo-job-sampler-0", "grpo-job-verifier-0", "grpo-job-rollout-controller"} <= names

    expected = {f"ray_{name}" for name in SPECS} - {"ray_fpa_ray_c_w", "ray_fpa_ray_c_l"}  # GRPO has no C_w/C_l
    assert expected <= seen, sorted(expected - seen)
