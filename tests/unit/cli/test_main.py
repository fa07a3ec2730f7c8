import subprocess
import sys

import pytest

from fpa_ray.main import STAGES, main


def test_help_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "fpa_ray.main", "--help"], capture_output=True, text=True, check=True)
    for stage in STAGES:
        assert stage in result.stdout


def test_config_stage_prints_the_resolved_config(capsys):
    assert main(["config", "fpa.lam=3", "objective.name=kto"]) == 0
    out = capsys.readouterr().out
    assert "lam: 3.0" in out and "name: kto" in out and "desirable_weight: 1.0" in out


def test_bad_override_exits_2_naming_the_key(capsys):
    assert main(["fpa.lamda=3"]) == 2
    assert "fpa.lamda: unknown key" in capsys.readouterr().err


@pytest.mark.parametrize(("stage", "overrides", "message"), [
    ("run", ["objective.name=grpo", "objective.params={}", "fpa.enabled=false"], "use the grpo stage"),
    ("grpo", ["objective.name=dpo", "objective.params={}"], "set objective.name=grpo"),
])
def test_pipeline_stage_must_match_the_objective(stage, overrides, message, capsys):
    assert main([stage, *overrides]) == 2
    assert message in capsys.readouterr().err


def test_compare_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path} has no curve.json" in capsys.readouterr().err


def test_objectives_stage_lists_the_registry(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name in ("dpo", "rpo", "kto", "simper", "offline_rl", "reinforce", "grpo"):
        assert name in out


def test_warmstart_stage_trains_then_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPA_RAY_CACHE", str(tmp_path))
    small = [
        "policy.sft.steps=20", "policy.sft.warmup_steps=5", "policy.sft.batch_size=8", "policy.sft.train_problems=200",
        "policy.sft.tokenizer_problems=200", "policy.sft.eval_problems=4", "policy.sft.eval_samples=1", "policy.sft.max_new_tokens=16",
    ]
    assert main(["warmstart", *small]) == 0
    first = capsys.readouterr().out
    assert "sft step 20/20" in first and "trained in" in first and str(tmp_path) in first
    assert main(["warmstart", *small]) == 0
    assert "(cached)" in capsys.readouterr().out


def test_make_demo_runs_the_demo_stage():
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    alone = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}  # not as `make test`'s sub-make
    plan = subprocess.run(["make", "-n", "demo"], cwd=root, capture_output=True, text=True, check=True, env=alone).stdout
    assert plan.strip().splitlines()[-1].endswith("-m fpa_ray.main demo"), plan
