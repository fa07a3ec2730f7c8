"""`ray job submit` of fpa_ray's CLI to a cluster started by a test, and reading its dashboard."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def get(url: str):
    """A dashboard URL's JSON (or text, for the Prometheus endpoint)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if body.startswith(("{", "[")) else body


def submit(env, dashboard, *command, wait=True):
    """`ray job submit -- python -m fpa_ray.main COMMAND...`: waited for, or returning once submitted."""
    return subprocess.run([str(RAY), "job", "submit", *([] if wait else ["--no-wait"]), "--address", dashboard, "--", sys.executable,
                           "-m", "fpa_ray.main", *command], env=env, capture_output=True, text=True, timeout=1500 if wait else 120)
