import re

import pytest

from fpa_ray.config import load_config
from fpa_ray.run_directory import RunDirectory, StageInputsChanged
from fpa_ray.run_files import provenance


def test_provenance_names_the_command_commit_date_and_machine():
    where = provenance(["benchmarks/experiments/headline.py", "--resume"])
    assert where["command"] == "python benchmarks/experiments/headline.py --resume"
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", where["commit"]), where["commit"]  # this checkout's HEAD
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", where["date"]) and "CPUs)" in where["machine"]


def test_a_stage_recorded_before_a_setting_existed_is_reused_and_a_changed_one_is_named(tmp_path):
    run = RunDirectory(tmp_path / "run", load_config("tiny-cpu"), log=lambda line: None)
    stage = tmp_path / "run" / "eval_0"
    recorded = {"policy": "p", "verifier": {"timeout_s": 5}, "eval": [{"split": "dev", "limit": 8}]}
    run.finish(stage, "evaluate", recorded, score=1)
    # a later fpa_ray adds a setting (at its default) to a section, to a list's items and a new input
    later = {"policy": "p", "verifier": {"timeout_s": 5, "new": 0.5}, "eval": [{"split": "dev", "limit": 8, "new": 1}], "added": 1}
    assert run.done(stage, later)["score"] == 1
    for changed, named in [({**later, "verifier": {"timeout_s": 9, "new": 0.5}}, r"\(verifier\.timeout_s\)"),
                           ({**later, "eval": [{"split": "dev", "limit": 9}]}, r"\(eval\)"),
                           ({"verifier": later["verifier"], "eval": later["eval"]}, r"\(policy\)")]:
        with pytest.raises(StageInputsChanged, match=named):
            run.done(stage, changed)
