import json

import numpy as np
import pytest

from fpa_ray.accounting import NOT_TRAINING, Ledger
from fpa_ray.compare import CompareError, SeedCurves, compare, cost_to_reach, evaluations_since_best, ratio_with_interval, seed_ratio, summarise
from fpa_ray.config import ConfigError, load_config


def test_ledger_charges_the_whole_cluster_and_what_each_stage_used(tmp_path):
    cluster = {"hosts": 2, "cpus": 16.0, "gpus": 8.0}  # two machines, whatever a stage uses of them
    ledger = Ledger(tmp_path / "ledger.jsonl", held=lambda: cluster)
    ledger.charge("generate", 1, 100.0, 110.0, cpus=2)
    ledger.charge("eval_generate", 1, 110.0, 150.0, cpus=2)
    ledger.charge("train", 1, 150.0, 170.0, cpus=4, gpus=2)
    assert ledger.entries()[0]["cluster"] == cluster and ledger.entries()[0]["node_seconds"] == 20.0
    assert ledger.cost_until(160.0, NOT_TRAINING) == {"node_seconds": 2 * 10 + 2 * 10, "cpu_seconds": 2 * 10 + 4 * 10, "gpu_seconds": 2 * 10}
    assert ledger.cost_until(105.0, NOT_TRAINING) == {"node_seconds": 10.0, "cpu_seconds": 10.0, "gpu_seconds": 0.0}
    assert ledger.cost_until(1e9)["cpu_seconds"] == 20 + 80 + 80 and ledger.cost_until(1e9)["node_seconds"] == 2 * 70
    assert ledger.totals()["train"] == {"wall_s": 20.0, "node_seconds": 40.0, "cpu_seconds": 80.0, "gpu_seconds": 40.0}


def _curve(name, points, unit="CPU-hours"):
    return {"name": name, "description": name, "unit": "node-hours", "used": unit,
            "points": [{"point": str(i), "pass_at_1": acc, "pass_at_k": acc, "node_hours": h, "cpu_hours": 4 * h, "gpu_hours": 0.0 if unit == "CPU-hours" else h / 2}
                       for i, (acc, h) in enumerate(points)]}


def test_summary_takes_the_first_runs_best_as_the_target_and_interpolates_the_cost_to_reach_it():
    online = _curve("grpo", [(0.30, 0.0), (0.40, 1.0), (0.45, 2.0), (0.44, 3.0)])
    offline = _curve("fpa", [(0.30, 0.0), (0.46, 0.5)])
    weak = _curve("dpo", [(0.30, 0.0), (0.35, 0.5)])
    rows, target, used = summarise([online, offline, weak])
    assert target == 0.45 and used == "CPU-hours"
    assert [(r["final"], r["best"], r["hours"], r["used"]) for r in rows] == [(0.44, 0.45, 3.0, 12.0), (0.46, 0.46, 0.5, 2.0), (0.35, 0.35, 0.5, 2.0)]
    assert [r["hours_to_target"] for r in rows] == [2.0, pytest.approx(0.5 * 15 / 16), None]  # 0.45 is 15/16 of the way to 0.46
    assert cost_to_reach(online["points"], 0.42) == pytest.approx(1.4) and cost_to_reach(online["points"], 0.3) == 0.0
    rows, _, _ = summarise([_curve("worse", [(0.30, 0.0), (0.25, 1.0), (0.27, 2.0)])])
    assert rows[0]["best"] == 0.27  # the trained policies' best, not the shared start
    old = _curve("old", [(0.3, 0.0)])
    del old["points"][0]["node_hours"]
    with pytest.raises(CompareError, match="old: its curve.json has no node-hours"):
        summarise([old])


def _sampled(curve, costs, problems=400, noise=None):
    """Per-problem pass@1 of policies whose mean accuracy follows `curve` (a function of cost) at `costs`:
    a policy solves the problems below its accuracy (each problem's difficulty fixed); with `noise` (a
    seed), the share of 4 samples that solve it, each with probability 0.8 or 0.2 around that line."""
    difficulty = np.random.default_rng(0).random(problems)
    solved = np.array([(difficulty < curve(c)).astype(float) for c in costs])
    if noise is None:
        return solved
    rng = np.random.default_rng([noise, 1])  # a stream of its own, not the difficulties'
    return rng.binomial(4, 0.2 + 0.6 * solved) / 4


def test_the_ratio_does_not_hinge_on_where_each_method_was_evaluated():
    rising = lambda c: 0.3 + 0.2 * min(c, 1.0)  # noqa: E731  linear to 0.5 at cost 1, then flat
    sparse, dense = np.array([0, 0.5, 1.0, 1.5, 2.0]), np.array([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    seed = SeedCurves(costs={"a": sparse, "b": dense}, scores={"a": _sampled(rising, sparse), "b": _sampled(rising, dense)},
                      plateaus={"a": 2, "b": 10})
    assert seed_ratio(seed, "b", "a") == pytest.approx(1.0, abs=0.01)  # the same curve: 1, however sparsely one side is evaluated
    identical = SeedCurves(costs={"a": sparse, "b": sparse}, scores={"a": _sampled(rising, sparse)} | {"b": _sampled(rising, sparse)},
                           plateaus={"a": 2, "b": 2})
    assert seed_ratio(identical, "b", "a") == 1.0
    twice = SeedCurves(costs={"a": sparse, "b": dense / 2}, scores={"a": _sampled(rising, sparse), "b": _sampled(rising, dense)},
                       plateaus={"a": 2, "b": 10})
    assert seed_ratio(twice, "b", "a") == pytest.approx(0.5, abs=0.01)  # the same curve at half the cost


def test_flat_curves_have_no_plateau_to_reach_and_so_no_ratio():
    rng = np.random.default_rng(1)
    costs = {"offline": np.array([0, 0.03, 0.06, 0.09]), "grpo": np.array([0, 0.1, 0.2, 0.3])}
    defined = 0
    for _ in range(50):  # two methods that never move: the start's accuracy plus sampling noise at every evaluation
        start = rng.binomial(4, 0.3, 300) / 4
        scores = {m: np.array([start] + [rng.binomial(4, 0.3, 300) / 4 for _ in range(3)]) for m in costs}
        plateaus = {m: int(np.argmax(scores[m].mean(axis=1))) for m in costs}  # each one's best, as a dev choice would pick it
        defined += seed_ratio(SeedCurves(costs, scores, plateaus), "offline", "grpo") is not None
    assert defined <= 10  # the 2-SE gate lets a lucky max of three noisy points through now and then, never most of the time
    flat = SeedCurves(costs, {m: np.tile(start, (4, 1)) for m in costs}, {"offline": 3, "grpo": 3})
    assert ratio_with_interval([flat, flat], "offline", "grpo") == {"ratio": None, "per_seed": [None, None], "low": None, "high": None, "draws": 0}


def test_the_ratio_interval_covers_the_estimate_and_narrows_with_more_problems():
    rising = lambda c: 0.3 + 0.2 * min(c, 1.0)  # noqa: E731
    costs = np.array([0, 0.25, 0.5, 0.75, 1.0, 1.25])

    def seed(problems, shift, index):
        return SeedCurves(costs={"a": costs, "b": costs * shift}, plateaus={"a": 4, "b": 4},
                          scores={"a": _sampled(rising, costs, problems, noise=2 * index), "b": _sampled(rising, costs, problems, noise=2 * index + 1)})

    small = ratio_with_interval([seed(200, 0.5, 0), seed(200, 0.5, 1)], "b", "a", draws=300)
    large = ratio_with_interval([seed(4000, 0.5, 0), seed(4000, 0.5, 1)], "b", "a", draws=300)
    for result in (small, large):
        assert result["low"] <= result["ratio"] <= result["high"] and result["draws"] == 300
    assert large["per_seed"] == [pytest.approx(0.5, abs=0.1)] * 2
    assert large["high"] - large["low"] < small["high"] - small["low"]  # problems' sampling noise: the interval's share
    spread = ratio_with_interval([seed(4000, 0.3, 0), seed(4000, 0.7, 1)], "b", "a", draws=300)  # seeds that disagree
    assert spread["high"] - spread["low"] > large["high"] - large["low"]
    assert small == ratio_with_interval([seed(200, 0.5, 0), seed(200, 0.5, 1)], "b", "a", draws=300)  # seeded: the same draws


def test_evaluations_since_best_counts_ties_as_no_gain():
    assert evaluations_since_best([0.2]) == 0 and evaluations_since_best([0.2, 0.3]) == 0
    assert evaluations_since_best([0.2, 0.3, 0.3, 0.1]) == 2 and evaluations_since_best([0.5, 0.1, 0.2]) == 2


def test_gpu_hours_used_are_shown_when_any_run_used_gpus():
    rows, _, used = summarise([_curve("a", [(0.1, 0.0), (0.2, 4.0)], unit="GPU-hours"), _curve("b", [(0.1, 0.0)])], target=0.2)
    assert used == "GPU-hours" and rows[0]["hours"] == 4.0 and rows[0]["used"] == 2.0 and rows[0]["hours_to_target"] == 4.0


def test_compare_writes_table_and_plot_and_names_bad_directories(tmp_path):
    for name, points in (("grpo", [(0.3, 0.0), (0.4, 1.0)]), ("fpa", [(0.3, 0.0), (0.42, 0.25)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(_curve(name, points)))
    report = compare([tmp_path / "grpo", tmp_path / "fpa"], tmp_path / "out")
    text = report.read_text()
    assert "| grpo | 30.0% | 40.0% | 40.0% | 1.0000 | 1.0000 | 4.0000 |" in text
    assert "| fpa | 30.0% | 42.0% | 42.0% | 0.2500 | 0.2083 | 1.0000 |" in text  # 0.40 is 10/12 of the way to 0.42
    assert (tmp_path / "out" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="empty has no curve.json"):
        compare([tmp_path / "empty"], tmp_path / "out")


def test_grpo_config_checks_group_and_batch_sizes():
    grpo, offline = load_config("tiny-cpu-grpo"), load_config("tiny-cpu")
    assert grpo.grpo.prompts_per_step * grpo.sampler.n == 256
    # Scored alike (same evaluation settings, engine and prompts) and charged alike: the same sampling engine.
    assert grpo.evaluation == offline.evaluation and grpo.data.eval == offline.data.eval and grpo.sampler.engine == offline.sampler.engine
    assert grpo.grpo.weight_sync == "collective"
    with pytest.raises(ConfigError, match="sampler.n: GRPO normalises rewards within a group"):
        load_config("tiny-cpu-grpo", ["sampler.n=1"])
    with pytest.raises(ConfigError, match=r"must divide a rollout's grpo.prompts_per_step x sampler.n = 240"):
        load_config("tiny-cpu-grpo", ["grpo.prompts_per_step=30"])
    with pytest.raises(ConfigError, match="grpo.stepz: unknown key .did you mean .steps.?"):
        load_config("tiny-cpu-grpo", ["grpo.stepz=3"])


def test_metrics_are_a_no_op_outside_ray(tmp_path, monkeypatch):
    import ray

    from fpa_ray import metrics

    # The test session's integration tests may have started Ray: look like a process without it.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(metrics, "_METRICS", {})
    ledger = Ledger(tmp_path / "ledger.jsonl", run="r")
    with ledger.stage("generate", 1, cpus=1):  # gauges and counters: nothing to report to, nothing raised
        metrics.samples_generated("r", "generate", 5)
        metrics.verdicts("r", {"correct": 1, "incorrect": 0})
        metrics.training_step("r", {"loss": 0.5, "C_w": 0.1}, tokens=100)
    assert ledger.entries()[0]["stage"] == "generate" and not metrics._METRICS
