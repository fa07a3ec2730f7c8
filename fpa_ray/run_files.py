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
