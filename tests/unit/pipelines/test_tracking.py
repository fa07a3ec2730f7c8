"""The experiment trackers for real: MLflow's file store read back through MLflow's own client, W&B
offline (no account), TensorBoard event files."""

import json
import sys

import pytest

from fpa_ray.config import ConfigError, TrackingConfig, load_config
from fpa_ray.tracking import TrackingRun, check_installed, flatten


def test_a_run_logs_each_stage_on_its_own_axis_and_a_resumed_run_finds_its_tracker_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_config("tiny-cpu", ["tracking.trackers=[tensorboard, mlflow, wandb]", "tracking.wandb_mode=offline", "name=tracked",
                                      f"output_dir={tmp_path}"])
    run_dir = tmp_path / "tracked"
    run_dir.mkdir()
    run = TrackingRun.start(config.tracking, config.name, run_dir, config.model_dump(mode="json"))
    for prefix in ("round_1/", "round_2/"):  # each round's learner counts its steps from 1
        with run.open(prefix, run_dir / prefix.strip("/") / "tensorboard") as trackers:
            for step in (1, 2, 3):
                trackers.log({"loss": 1.0 / step, "C_w": 0.1, "step": step, "note": "not a number"}, step)

    client = run.mlflow_client()
    assert run.mlflow_uri == (tmp_path / "mlruns").as_uri()  # the default: a file store beside the runs
    history = client.get_metric_history(run.ids["mlflow"], "round_2/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    recorded = client.get_run(run.ids["mlflow"])
    assert recorded.info.run_name == "tracked" and recorded.data.params["learner.lr"] == str(config.learner.lr)
    assert "round_1/note" not in recorded.data.metrics and "round_1/step" not in recorded.data.metrics
    assert client.get_experiment(recorded.info.experiment_id).name == "fpa_ray"
    assert list((run_dir / "round_1" / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((tmp_path / "wandb").glob(f"offline-run-*-{run.ids['wandb']}"))
    assert offline and all(list(d.glob("*.wandb")) for d in offline)  # one offline record per process that logged, one run id

    again = TrackingRun.start(config.tracking, config.name, run_dir, config.model_dump(mode="json"))
    assert again.ids == run.ids == json.loads((run_dir / "tracking.json").read_text())
    assert len(client.search_runs([recorded.info.experiment_id])) == 1  # resumed into, not duplicated


def test_tensorboard_alone_needs_no_tracker_package_and_a_missing_one_is_named(tmp_path, monkeypatch):
    run = TrackingRun.start(TrackingConfig(), "plain", tmp_path, {})
    assert run.ids == {} and not (tmp_path.parent / "mlruns").exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(RuntimeError, match=r'tracking.trackers names mlflow, which is not installed: pip install -e ".\[tracking\]"'):
        check_installed(TrackingConfig(trackers=["mlflow"]))
    with pytest.raises(ConfigError, match="tracking.trackers.0: Input should be 'tensorboard', 'mlflow' or 'wandb'"):
        load_config("tiny-cpu", ["tracking.trackers=[comet]"])


def test_flatten_gives_dotted_parameters():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "{}"}
