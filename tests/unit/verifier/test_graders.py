"""Both graders on the shared case table, in-process (the pool tests cover isolation)."""

import os

import pytest

from fpa_ray.verifier.extract import extract_answer
from fpa_ray.verifier.graders import GoldAnswerError, grade_math_verify, grade_normalized, grader_version, normalize_answer
from fpa_ray.verifier.pool import _check

from tests.helpers.verifier_cases import CASES


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
    assert normalize_answer("x = \\dfrac{3}{4}") == ("x=\\frac{3}{4}", False)  # the label goes at comparison
    assert grade_normalized("\\frac{3}{4}", "x = \\dfrac{3}{4}", 5.0) is True
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


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        # arithmetic and polynomials, compared by value at fixed points
        ("10", "(9+1)", True), ("x^2+2x+1", "(x+1)^2", True), ("x^2+2x+1", "x^2 + 2*x - (-1)", True),
        ("x^2+2x+1", "x^3+2x+1", False), ("\\frac{\\pi r}{h+r}", "\\frac{r\\pi}{r+h}", True), ("\\sqrt{2}+\\sqrt{5}", "\\sqrt 5+\\sqrt 2", True),
        ("918\\frac{1}{2}", "918.5", True), ("\\frac{5\\sqrt{42}}{27}", "\\frac{10\\sqrt{10.5}}{27}", True), ("1", "\\frac3{3}", True),
        # relations, equations up to a factor, chained inequalities as intervals
        ("x \\geq 5", "5 \\leq x", True), ("x < 1", "-x > -1", True), ("x \\leq 5", "x < 5", False), ("x \\geq 5", "x \\leq 5", False),
        ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}", True), ("x^2/4 + y^2/3 = 1", "x^2/16 + y^2/12 = 1/4", True),
        ("2x+4y-3=0", "y=-\\frac{1}{2}x+1", False), ("-793 < a < 10", "(-793, 10)", True), ("-793 \\leq a < 10", "(-793, 10)", False),
        # labels and worked chains: the value at the end is the answer
        ("x = 11", "x = 5+5+1 = 7 =11", True), ("(p,q)=(3,2)", "(3,2)", True), ("V_{1}:V_{2}=11:21", "11:21", True),
        ("y = x^2+2x+1", "2x+ 1+x^2", True), ("11", "x\\approx11", True), ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt{3}}{3} \\approx 0.577", True),
        ("a +3z = 0", "0", False), ("2x + z = 1", "1", False), ("7 = 11a+c", "11a+c", False),
        # listed answers are sets, as math-verify reads them
        ("1,-2", "-2, 1", True), ("1 and 2 and 3", "1,2,3", True), ("21,16 or 11", "21,16,11", True), ("\\pm 2021", "\\{-2021, 2021\\}", True),
        ("a_3 = 2, a_{37} = 19", "a_{37} = 19, \\quad a_3 = 2", True), ("(0;0;0),(4;-2;6)", "(4, -2, 6), (0, 0, 0)", True),
        ("1,2,3", "1,2", False), ("(2,1),(1,2)", "(2,1),(2,1)", False),
        # notation: thousands, percent words, matrices, text after a number, a doubled backslash
        ("14916", "14{,}916", True), ("11111111100", "11,\\! 111,\\! 111,\\! 100", True), ("28\\%", "28 percent", True),
        ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right]", True),
        ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1 & 2 \\\\ 3 & 5\\end{bmatrix}", False),
        ("17", "17\\text{ any text}", True), ("(3, \\frac{\\pi}{2})", "\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)", True), ("\\text{C}", "\\text{(C)}", True),
    ],
)
def test_normalized_grader_reads_what_peer_graders_accept(gold, predicted, expected):
    assert grade_normalized(gold, predicted, 5.0) is expected


def test_expression_reader_refuses_what_it_cannot_bound():
    from fpa_ray.verifier.expression import parse_expression, same_value

    assert parse_expression("x" * 500) is None  # too long
    assert parse_expression("(" * 40 + "1" + ")" * 40) is None  # too deep
    assert parse_expression("__import__('os')") is None and parse_expression("2!") is None
    tower = parse_expression("9^{9^{9^{9}}}")
    assert tower is not None and not same_value(tower, parse_expression("5"))  # overflows: not comparable, not equal
    assert not same_value(parse_expression("\\sqrt{x-100}"), parse_expression("\\sqrt{x-100}"))  # undefined at every point
    assert not same_value(parse_expression("\\sqrt{v^2}"), parse_expression("v"))  # |v|: a negative point tells them apart
    assert not same_value(parse_expression("|x|"), parse_expression("x")) and same_value(parse_expression("|x|^2"), parse_expression("x^2"))
