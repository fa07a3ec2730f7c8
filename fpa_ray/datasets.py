"""Reading the stages' Parquet outputs as Ray Datasets.

Ray Data 2.60 lists Parquet files by reading every footer on a pool of
RAY_DATA_PARQUET_FOOTER_NUM_ACTORS fresh actors (default 32) per `read_parquet`, sized for
thousands of files in object storage. A stage output is a handful of local files, and there the
pool is the whole cost: 7-12 s to read one 45 kB file on this 2-core machine, 1.2-1.5 s with one
actor (each Ray Train worker of the train stage pays it again). The pool is sized here to the
files (one actor per footer batch, at most Ray's default); a value the user set wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

FOOTER_ACTORS = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FOOTER_BATCH = "RAY_DATA_PARQUET_FOOTER_BATCH_SIZE"


def footer_actors(num_files: int) -> int:
    """Ray's footer batches for `num_files` files, each on its own actor, at most its default 32."""
    batch = int(os.environ.get(FOOTER_BATCH, 10))
    return max(1, min(32, math.ceil(num_files / batch)))


def read_parquet(paths: list[Path] | Path):
    """`ray.data.read_parquet` of files or one directory, with the footer pool sized to them."""
    import ray

    paths = [Path(p) for p in paths] if isinstance(paths, list) else [Path(paths)]
    files = [f for p in paths for f in (sorted(p.rglob("*.parquet")) if p.is_dir() else [p])]
    chosen_by_user = FOOTER_ACTORS in os.environ
    if not chosen_by_user:  # read by the file indexer read_parquet builds in this process, not by its tasks
        os.environ[FOOTER_ACTORS] = str(footer_actors(len(files)))
    try:
        return ray.data.read_parquet([str(p) for p in paths])
    finally:
        if not chosen_by_user:
            del os.environ[FOOTER_ACTORS]
