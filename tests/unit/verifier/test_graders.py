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
    assert grader_version("math_verify").startswith("math_verify==0.9") and grader_version("math_verify").endswith("+extract2")
    assert grader_version("normalized") == "normalized==2+extract2"
    with pytest.raises(ValueError, match="unknown grader"):
        grader_version("llm_judge")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize(
    ("gold", "response"),
    [
        ("\\{1,2,3\\}", "\\boxed{1}, \\boxed{2}, \\boxed{3}"),
        ("(2,1),(1,2),(-1,-20),(-20,-1)", "\\[\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}, \\boxed{(-20, -1)}\\]"),
        ("1,-2", "\\( f(n) = n \\) are: \\[ \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. \\]"),
        ("x = 2, x = -3", "so $x_1 = \\boxed{2}$ and $x_2 = \\boxed{-3}$"),
        ("1000", "\\boxed{1 000}"),
        ("1000000", "\\boxed{1\\,000\\,000}"),
        ("2", "\\boxed{17 \\bmod 5 = 2}"),
        ("\\begin{pmatrix} 0 & 3 \\\\\n 0 & -1 \\end{pmatrix}", "\\boxed{\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}}"),
    ],
)
def test_answer_forms_math_verify_reads(gold, response):
    """The classes where the grader lost to math-verify called directly: several boxes, `1 000`, an equation's
    right-hand side, a gold answer spanning lines."""
    extracted = extract_answer(response).answer
    assert _check("math_verify", gold, extracted, 5.0)[0] == "correct", extracted


def test_right_hand_side_and_thousands_do_not_invent_matches():
    assert _check("math_verify", "2", "17 \\bmod 5 = 3", 5.0)[0] == "incorrect"
    assert _check("math_verify", "1000", "1 001", 5.0)[0] == "incorrect"
    assert _check("math_verify", "x = 2", "x = 3", 5.0)[0] == "incorrect"  # an equation gold compares whole
    assert _check("math_verify", "\\{1,2,3\\}", extract_answer("\\boxed{1}, \\boxed{2}").answer, 5.0)[0] == "incorrect"


def test_an_exception_inside_math_verify_falls_back_to_the_other_grader_and_is_marked():
    # math-verify raises "Can't evaluate nan or zoo" on 12:00 when asked to raise: not a verdict on the answer.
    status, detail, _ = _check("math_verify", "12:00", "12:00", 5.0)
    assert status == "correct" and detail.startswith("fallback: normalized graded it; math_verify raised")
    status, detail, _ = _check("math_verify", "12:00", "1:00", 5.0)
    assert status == "incorrect" and detail.startswith("fallback:")
    assert _check("math_verify", "5", "5", 5.0)[1] == ""  # no fallback where math-verify answered
