"""rerun_on_node_loss: which failures rerun a pool stage. The node listing here is a scripted
stand-in for `ray.nodes()`; the real loss (a verifier node SIGKILLed under the footer listing of
the verify stage's read) is test_multinode.py's."""

import pytest

from fpa_ray.node_loss import rerun_on_node_loss


class ScriptedCluster:
    """Alive node ids that shrink when `lose` is called, as `ray.nodes()` reports after a node died."""

    def __init__(self, *nodes):
        self.alive = set(nodes)

    def lose(self, node):
        self.alive.discard(node)

    def __call__(self):
        return set(self.alive)


class Flaky:
    """Work that fails its first `failures` calls, each after losing a node (or none)."""

    def __init__(self, cluster, losses):
        self.cluster, self.losses, self.calls = cluster, list(losses), 0

    def __call__(self):
        self.calls += 1
        if self.losses:
            node = self.losses.pop(0)
            if node:
                self.cluster.lose(node)
            raise RuntimeError(f"pipeline failed (call {self.calls})")
        return "graded"


def test_a_stage_failing_with_a_node_lost_reruns_and_logs_which():
    cluster, lines = ScriptedCluster("head", "verifier-1", "verifier-2"), []
    work = Flaky(cluster, ["verifier-1", "verifier-2"])
    assert rerun_on_node_loss(work, 2, lines.append, "verify", nodes=cluster) == "graded"
    assert work.calls == 3
    assert len(lines) == 2 and "[verify] 1 node(s) lost mid-stage (verifier" in lines[0] and lines[1].endswith("(2/2)")


def test_a_failure_without_a_lost_node_is_raised_at_once():
    cluster, lines = ScriptedCluster("head", "verifier-1"), []
    work = Flaky(cluster, [None])
    with pytest.raises(RuntimeError, match="call 1"):
        rerun_on_node_loss(work, 2, lines.append, "verify", nodes=cluster)
    assert work.calls == 1 and lines == []


def test_more_lost_nodes_than_max_failures_raise_the_last_failure():
    cluster, lines = ScriptedCluster("head", "a", "b", "c"), []
    work = Flaky(cluster, ["a", "b"])
    with pytest.raises(RuntimeError, match="call 2"):
        rerun_on_node_loss(work, 1, lines.append, "generate", nodes=cluster)
    assert work.calls == 2 and len(lines) == 1


def test_a_node_lost_before_the_stage_started_does_not_count():
    # a node already gone at the rerun's start is not lost by the rerun: its own bad input is raised
    cluster, lines = ScriptedCluster("head", "a"), []
    work = Flaky(cluster, ["a", None])
    with pytest.raises(RuntimeError, match="call 2"):
        rerun_on_node_loss(work, 3, lines.append, "verify", nodes=cluster)
    assert work.calls == 2 and len(lines) == 1
