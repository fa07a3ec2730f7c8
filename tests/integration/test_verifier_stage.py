"""The verify stage on a real local Ray cluster: case table, hostile input, a killed actor, health check."""

import os
import signal
import threading
import time
from collections import Counter

import pytest

from fpa_ray.config import VerifierConfig
from fpa_ray.verifier.pool import STATUSES
from fpa_ray.verifier.stage import VerificationReport, VerifierHealthError, VerifyStage

from tests.helpers.verifier_cases import CASES, HOSTILE

pytestmark = pytest.mark.slow


def _rows(pairs):
    return [{"sample_id": i, "answer": gold, "response": response} for i, (gold, response) in enumerate(pairs)]


def test_case_table_through_the_pool_with_cross_grading(ray_cluster):
    config = VerifierConfig(cross_grader="normalized", num_actors=2, batch_size=16, timeout_s=5.0)
    rows = _rows([(gold, response) for gold, response, _, _ in CASES])
    out = {r["sample_id"]: r for r in VerifyStage(config)(ray_cluster.data.from_items(rows)).take_all()}
    assert sorted(out) == list(range(len(CASES)))
    for i, (gold, response, expected, kind) in enumerate(CASES):
        row = out[i]
        assert (row["status"], row["reward"]) == (expected, 1.0 if expected == "correct" else 0.0), (gold, response)
        assert row["grader"] == "math_verify" and row["response"] == response
        if kind == "both":
            assert row["cross_status"] == expected
    assert out[0]["extracted"] == "5" and out[0]["verify_seconds"] >= 0.0


def test_hostile_responses_come_back_quickly_and_the_pool_keeps_serving(ray_cluster, tmp_path):
    marker = "/tmp/fpa_ray_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    pairs = [pair for hostile in HOSTILE for pair in (hostile, ("5", "\\boxed{5}"))]
    # Arrow string columns must be valid UTF-8: bytes arrive decoded with replacement, as a reader would.
    pairs = [(g, r.decode("utf-8", errors="replace") if isinstance(r, bytes) else r) for g, r in pairs]
    config = VerifierConfig(num_actors=1, batch_size=len(pairs), timeout_s=2.0)
    out = sorted(VerifyStage(config)(ray_cluster.data.from_items(_rows(pairs))).take_all(), key=lambda r: r["sample_id"])
    for row in out[0::2]:
        assert row["status"] in STATUSES and row["status"] != "correct", row["response"][:60]
        assert row["verify_seconds"] <= 2.0 + 0.3
    assert [row["status"] for row in out[1::2]] == ["correct"] * len(HOSTILE)
    assert not os.path.exists(marker)


def test_a_killed_actor_loses_no_sample_and_duplicates_none(ray_cluster):
    from ray.util.state import list_actors

    count = 6000
    pairs = [(str(i), f"\\boxed{{{i if i % 3 else i + 1}}}") for i in range(count)]
    config = VerifierConfig(num_actors=2, batch_size=100, timeout_s=5.0)
    dataset = VerifyStage(config)(ray_cluster.data.from_items(_rows(pairs), override_num_blocks=60))
    killed = []

    def kill_one_actor():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "MapWorker" in a.class_name and a.pid]
            if len(alive) == 2:
                time.sleep(0.5)  # let both start grading
                os.kill(alive[0].pid, signal.SIGKILL)
                killed.append(alive[0].pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    rows = [row for batch in dataset.iter_batches(batch_size=500, batch_format="pandas") for row in batch.to_dict("records")]
    killer.join()
    assert killed, "no actor was killed: the run finished before the killer found both actors"
    ids = Counter(row["sample_id"] for row in rows)
    assert len(ids) == count and set(ids.values()) == {1}  # every sample exactly once
    for row in rows:
        expected = "correct" if row["sample_id"] % 3 else "incorrect"
        assert row["status"] == expected


def test_report_counts_and_health_threshold(ray_cluster):
    pairs = [("5", "\\boxed{5}")] * 4 + [("5", "no answer at all")] * 6
    out = VerifyStage(VerifierConfig(num_actors=1))(ray_cluster.data.from_items(_rows(pairs)))
    report = VerificationReport.from_dataset(out)
    assert report.checks == 10 and report.by_status["correct"] == 4 and report.by_status["unparseable"] == 6
    assert report.failure_share == pytest.approx(0.6)
    with pytest.raises(VerifierHealthError, match=r"60% of 10 checks ended unparseable/timeout/error \(limit 50%\)"):
        report.raise_if_unhealthy(0.5)
    report.raise_if_unhealthy(0.7)
    assert "p50" in report.summary()
