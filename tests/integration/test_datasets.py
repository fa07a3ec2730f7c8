"""Stage outputs read as Ray Datasets with Ray Data's footer-reader pool sized to their files."""

import os

import pandas as pd
import pytest

from fpa_ray.datasets import FOOTER_ACTORS, footer_actors, read_parquet

pytestmark = pytest.mark.slow


def _pool_size(dataset) -> int:
    """The FooterReader actors the dataset's ListFiles operator will start (Ray Data 2.60's indexer)."""
    (list_files,) = dataset._logical_plan.dag.input_dependencies
    return list_files.file_indexer._num_actors


def test_footer_pool_follows_the_files_and_a_users_setting_wins(ray_cluster, tmp_path, monkeypatch):
    assert [footer_actors(n) for n in (0, 1, 10, 11, 320, 10_000)] == [1, 1, 1, 2, 32, 32]
    for i in range(12):
        pd.DataFrame({"row": [i], "text": [f"r{i}"]}).to_parquet(tmp_path / f"shard-{i:05d}.parquet")

    dataset = read_parquet(tmp_path)
    assert _pool_size(dataset) == 2 and FOOTER_ACTORS not in os.environ
    assert sorted(r["row"] for r in dataset.iter_rows()) == list(range(12))  # every row, read for real
    files = read_parquet([tmp_path / "shard-00003.parquet", tmp_path / "shard-00007.parquet"])
    assert _pool_size(files) == 1 and sorted(r["row"] for r in files.iter_rows()) == [3, 7]

    monkeypatch.setenv(FOOTER_ACTORS, "5")
    assert _pool_size(read_parquet(tmp_path)) == 5 and os.environ[FOOTER_ACTORS] == "5"
