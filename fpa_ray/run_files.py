"""JSON files of a run (manifests, summaries, curves), each written whole or not at all: a reader
never sees half a file, and a crash leaves the previous version or none."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(partial, path)


def provenance(argv: list[str] | None = None) -> dict[str, str]:
    """What produced a result: the command line, the commit (with `+dirty` for uncommitted changes), the
    UTC date and the machine."""
    import platform
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"command": " ".join(["python", *(sys.argv if argv is None else argv)]), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)"}
