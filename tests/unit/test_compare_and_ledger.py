import json

import pytest

from fpa_ray.accounting import NOT_TRAINING, Ledger
from fpa_ray.compare import CompareError, compare, evaluations_since_best, hours_to_reach, summarise
from fpa_ray.config import ConfigError, load_config


def test_ledger_cost_until_cuts_entries_and_leaves_out_evaluation(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.charge("generate", 1, 100.0, 110.0, cpus=2)
    ledger.charge("eval_generate", 1, 110.0, 150.0, cpus=2)
    ledger.charge("train", 1, 150.0, 170.0, cpus=4, gpus=2)
    assert ledger.cost_until(160.0, NOT_TRAINING) == {"cpu_seconds": 2 * 10 + 4 * 10, "gpu_seconds": 2 * 10}
    assert ledger.cost_until(105.0, NOT_TRAINING) == {"cpu_seconds": 10.0, "gpu_seconds": 0.0}
    assert ledger.cost_until(1e9)["cpu_seconds"] == 20 + 80 + 80
    assert ledger.totals()["train"] == {"wall_s": 20.0, "cpu_seconds": 80.0, "gpu_seconds": 40.0}


def _curve(name, points, unit="CPU-hours"):
    return {"name": name, "description": name, "unit": unit,
            "points": [{"point": str(i), "pass_at_1": acc, "pass_at_k": acc, "cpu_hours": h, "gpu_hours": h / 2} for i, (acc, h) in enumerate(points)]}


def test_summary_takes_the_first_runs_best_as_the_target():
    online = _curve("grpo", [(0.30, 0.0), (0.40, 1.0), (0.45, 2.0), (0.44, 3.0)])
    offline = _curve("fpa", [(0.30, 0.0), (0.46, 0.5)])
    weak = _curve("dpo", [(0.30, 0.0), (0.35, 0.5)])
    rows, target, unit = summarise([online, offline, weak])
    assert target == 0.45 and unit == "CPU-hours"
    assert [(r["final"], r["best"], r["hours"], r["hours_to_target"]) for r in rows] == [
        (0.44, 0.45, 3.0, 2.0), (0.46, 0.46, 0.5, 0.5), (0.35, 0.35, 0.5, None)]
    assert hours_to_reach(online["points"], 0.41, "gpu_hours") == 1.0
    rows, _, _ = summarise([_curve("worse", [(0.30, 0.0), (0.25, 1.0), (0.27, 2.0)])])
    assert rows[0]["best"] == 0.27  # the trained policies' best, not the shared start


def test_evaluations_since_best_counts_ties_as_no_gain():
    assert evaluations_since_best([0.2]) == 0 and evaluations_since_best([0.2, 0.3]) == 0
    assert evaluations_since_best([0.2, 0.3, 0.3, 0.1]) == 2 and evaluations_since_best([0.5, 0.1, 0.2]) == 2


def test_gpu_hours_are_compared_when_any_run_used_gpus():
    rows, _, unit = summarise([_curve("a", [(0.1, 0.0), (0.2, 4.0)], unit="GPU-hours"), _curve("b", [(0.1, 0.0)])], target=0.2)
    assert unit == "GPU-hours" and rows[0]["hours"] == 2.0 and rows[0]["hours_to_target"] == 2.0


def test_compare_writes_table_and_plot_and_names_bad_directories(tmp_path):
    for name, points in (("grpo", [(0.3, 0.0), (0.4, 1.0)]), ("fpa", [(0.3, 0.0), (0.42, 0.25)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(_curve(name, points)))
    report = compare([tmp_path / "grpo", tmp_path / "fpa"], tmp_path / "out")
    text = report.read_text()
    assert "| grpo | 30.0% | 40.0% | 40.0% | 1.0000 | 1.0000 |" in text
    assert "| fpa | 30.0% | 42.0% | 42.0% | 0.2500 | 0.2500 |" in text
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
