"""Step metrics across workers whose micro-batches report different metric keys (real gloo group)."""

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from fpa_ray.learner.optimizer_step import StepMetrics

# Worker 0's micro-batches hold both outcomes; worker 1's second one only correct samples, so no C_l.
MICRO_BATCHES = {
    0: [({"loss": 1.0, "C_w": 0.2, "C_l": 0.4, "num_units": 4}, 4, 10), ({"loss": 3.0, "C_w": 0.6, "C_l": 0.8, "num_units": 4}, 4, 12)],
    1: [({"loss": 2.0, "C_w": 0.4, "C_l": 0.6, "num_units": 4}, 4, 9), ({"loss": 0.0, "C_w": 1.0, "num_units": 4}, 4, 7)],
}
EXPECTED = {"loss": 6 / 4, "C_w": 2.2 / 4, "C_l": 1.8 / 3, "num_units": 16, "tokens": 38}


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics = StepMetrics()
        for values, units, tokens in MICRO_BATCHES[rank]:
            metrics.add(values, units, tokens)
        results[rank] = metrics.reduce()
    finally:
        dist.destroy_process_group()


def test_workers_with_different_metric_keys_agree_on_the_means():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A spawned manager: forking the pytest process, which may hold the session's Ray threads, is unsafe.
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
        gathered = dict(results)
    for rank in (0, 1):
        assert gathered[rank] == pytest.approx(EXPECTED)


def test_a_single_process_needs_no_group():
    metrics = StepMetrics()
    for values, units, tokens in MICRO_BATCHES[1]:
        metrics.add(values, units, tokens)
    assert metrics.reduce() == pytest.approx({"loss": 1.0, "C_w": 0.7, "C_l": 0.6, "num_units": 8, "tokens": 16})


def test_per_side_metrics_are_means_over_that_sides_rows():
    # Two labelled micro-batches of 4 samples: 3 correct (C_w 0.1, logp_chosen -2) and 1 correct (C_w 0.5, logp_chosen -6).
    metrics = StepMetrics()
    metrics.add({"loss": 1.0, "C_w": 0.1, "logp_chosen": -2.0, "C_l": 0.4, "num_units": 4, "num_chosen": 3, "num_rejected": 1}, 4, 10)
    metrics.add({"loss": 3.0, "C_w": 0.5, "logp_chosen": -6.0, "C_l": 0.2, "num_units": 4, "num_chosen": 1, "num_rejected": 3}, 4, 10)
    reduced = metrics.reduce()
    assert reduced == pytest.approx({"loss": 2.0, "C_w": 0.2, "logp_chosen": -3.0, "C_l": 0.25, "num_units": 8, "num_chosen": 4,
                                     "num_rejected": 4, "tokens": 20})
