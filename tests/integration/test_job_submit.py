"""`ray job submit` of the main job to a locally started head (`ray start --head`, dashboard on 127.0.0.1)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fpa_ray.cluster import LOCAL_RAY_ENV

from tests.integration.small_run import SMALL

pytestmark = pytest.mark.slow


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


def test_ray_job_submit_runs_the_main_job(tmp_path, tmp_path_factory):
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's socket paths must fit in 107 bytes
    dashboard = _free_port()
    env = {**os.environ, **LOCAL_RAY_ENV, "FPA_RAY_CACHE": str(tmp_path_factory.getbasetemp() / "pipeline-cache")}
    env.pop("RAY_ADDRESS", None)
    start = [
        str(ray_bin), "start", "--head", "--num-cpus=4", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        overrides = ["name=submitted", f"output_dir={tmp_path / 'runs'}", *SMALL]
        started = time.time()
        submit = subprocess.run(
            [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", sys.executable, "-m", "fpa_ray.main", "run", *overrides],
            env=env, capture_output=True, text=True, timeout=1500,
        )
        output = submit.stdout + submit.stderr
        assert submit.returncode == 0, output[-4000:]
        assert "succeeded" in output
        for progress in ("[warmstart]", "[generate]", "[verify]", "[build]", "[train]", "[evaluate]"):
            assert progress in output, progress  # the job's logs stream back with its progress
        report = tmp_path / "runs" / "submitted" / "report.md"
        assert report.exists() and report.stat().st_mtime > started
    finally:
        _stop_head(temp_dir)
