import re

from fpa_ray.run_files import provenance


def test_provenance_names_the_command_commit_date_and_machine():
    where = provenance(["benchmarks/experiments/headline.py", "--resume"])
    assert where["command"] == "python benchmarks/experiments/headline.py --resume"
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", where["commit"]), where["commit"]  # this checkout's HEAD
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", where["date"]) and "CPUs)" in where["machine"]
