"""Rerunning a pool stage whose Ray Data pipeline failed because a node was lost under it.

Ray Data restarts a pool's killed actors and retries their tasks, but not every part of a
pipeline: the Parquet footer listing of `read_parquet` runs on actors of its own that Ray Data
does not replace, and one placed on a node that dies fails the whole pipeline with ActorDiedError
(wrapped, on a job's driver, in an exception that cannot always be deserialized). What tells a
lost node from a bad input is therefore the cluster, not the exception: a stage that raised while
a node it started with stopped being alive runs again, from the parts it finished (generation
keeps its written shards, grading writes nothing until its pipeline is done), as Ray Train
restarts its worker group from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def alive_nodes() -> set[str]:
    """The node ids the cluster counts alive now."""
    import ray

    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def rerun_on_node_loss(work: Callable[[], T], max_failures: int, log: Callable[[str], None], stage: str,
                       nodes: Callable[[], set[str]] = alive_nodes) -> T:
    """`work()`, run again up to `max_failures` times when it raised and a node alive at its start
    is gone; any other failure, or one more than `max_failures`, is raised."""
    failures = 0
    while True:
        before = nodes()
        try:
            return work()
        except Exception as error:
            lost = before - nodes()
            if not lost or failures == max_failures:
                raise
            failures += 1
            log(f"[{stage}] {len(lost)} node(s) lost mid-stage ({', '.join(sorted(n[:8] for n in lost))}: {type(error).__name__}); "
                f"rerunning it from its finished parts ({failures}/{max_failures})")
