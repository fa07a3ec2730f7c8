"""The default grader against the verdicts other graders' own test suites assert (benchmarks/checks/grader_cases.jsonl)."""

import importlib.util
from pathlib import Path

import numpy as np

from fpa_ray.verifier.extract import extract_answer
from fpa_ray.verifier.pool import _check
from fpa_ray.verifier.stage import VerificationReport

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "checks" / "grader_agreement.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("grader_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cases_cite_their_source_and_keep_its_verdict():
    cases = _benchmark().load_cases()
    assert len(cases) >= 250 and len({case["source"] for case in cases}) >= 3
    for case in cases:
        assert case["path"] and len(case["commit"]) == 40 and case["test"] and isinstance(case["verdict"], bool)
    assert 0.15 < sum(not case["verdict"] for case in cases) / len(cases) < 0.5


def test_graders_against_math_verify_direct():
    """Measured: default 290/298 and normalized 284/298 against direct's 289/298, 4 false positives each."""
    bench = _benchmark()
    cases = bench.load_cases()
    direct = bench.tally(cases, [bench.math_verify_direct(case["gold"], case["response"]) for case in cases])
    extracted = [extract_answer(case["response"]).answer for case in cases]
    for grader in ("math_verify", "normalized"):
        verdicts = [a is not None and _check(grader, case["gold"], a, 5.0)[0] == "correct" for case, a in zip(cases, extracted)]
        ours = bench.tally(cases, verdicts)
        assert ours["all"]["fp"] <= direct["all"]["fp"], (grader, ours, direct)
        if grader == "math_verify":  # the default: at least math-verify called directly, on every source
            for source, row in ours.items():
                assert row["agree"] >= direct[source]["agree"], (source, row, direct[source])
        else:  # the cross-grader: agreement high enough that a disagreement flags real ambiguity
            assert ours["all"]["agree"] >= 0.9 * ours["all"]["cases"], (grader, ours)


def test_report_counts_fallback_verdicts():
    status = np.array(["correct", "incorrect", "correct"], dtype=object)
    detail = np.array(["", "fallback: normalized graded it; math_verify raised ValueError", ""], dtype=object)
    report = VerificationReport.from_columns(status, np.array([0.1, 0.2, 0.1]), detail)
    assert report.fallbacks == 1 and "1 by the fallback grader" in report.summary()
