"""Both graders on the shared case table, in-process (the pool tests cover isolation)."""

import os

import pytest

from fpa_ray.verifier.extract import extract_answer
from fpa_ray.verifier.graders import GoldAnswerError, grade_math_verify, grade_normalized, grader_version, normalize_answer
from fpa_ray.verifier.pool import _check

from ..verifier_cases import CASES


@pytest.mark.parametrize(("gold", "response", "expected", "kind"), CASES)
def test_case_table(gold, response, expected, kind):
    extracted = extract_answer(response).answer
    for grader in ("math_verify", "normalized"):
        status = "unparseable" if extracted is None else _check(grader, gold, extracted, 5.0)[0]
        if grader == "math_verify" or kind == "both":
            assert status == expected, (grader, gold, extracted)
        else:  # symbolic cases: the normalising grader may miss a true match but never invents one
            assert status != "correct" or expected == "correct"


def test_case_table_is_large_and_mixed():
    assert len(CASES) >= 100
    statuses = [case[2] for case in CASES]
    assert statuses.count("correct") > 40 and statuses.count("incorrect") > 25 and statuses.count("unparseable") >= 4
    assert sum("####" in case[1] or "answer is" in case[1] for case in CASES) >= 15  # GSM8K style


def test_code_in_an_answer_is_never_run(tmp_path):
    target = tmp_path / "pwned"
    for code in (f"__import__('os').system('touch {target}')", f"eval(\"__import__('os').system('touch {target}')\")"):
        for grader in (grade_math_verify, grade_normalized):
            assert grader("5", code, 5.0) is not True
    assert not target.exists()


def test_gold_that_cannot_be_parsed_is_an_error_not_a_zero():
    with pytest.raises(GoldAnswerError):
        grade_normalized("   ", "5", 5.0)
    assert _check("normalized", " $ $ ", "5", 5.0)[0] == "error"


def test_normalisation_details():
    assert normalize_answer("\\text{12 cm}") == ("12", False)
    assert normalize_answer("50\\%") == ("50", True)
    assert normalize_answer("x = \\dfrac{3}{4}") == ("\\frac{3}{4}", False)
    assert normalize_answer("\\left( 1, 2 \\right)") == ("(1,2)", False)
    assert grade_normalized("4.5e33", "4.5\\times10^{33}", 5.0) is True
    assert grade_normalized("(1,(2,3))", "(1,(2,3.0))", 5.0) is True
    assert grade_normalized("5", "1" * 100_000, 5.0) is False  # huge digit strings: no int() blow-up
    assert grade_normalized("5", "(" * 10_000 + ")" * 10_000, 5.0) is False  # deep nesting: bounded


def test_grader_versions_are_recorded():
    assert grader_version("math_verify").startswith("math_verify==0.9")
    assert grader_version("normalized") == "normalized==1"
    with pytest.raises(ValueError, match="unknown grader"):
        grader_version("llm_judge")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
