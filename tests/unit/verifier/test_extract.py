import pytest

from fpa_ray.verifier.extract import extract_answer, last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("space form \\boxed 5$ done", "5"),
        ("\\fbox{7}", "7"),
        ("unbalanced \\boxed{12", None),
        ("no answer", None),
        ("", None),
        ("\\boxed", None),
        ("\\boxed{" + "{" * 10_000 + "}" * 10_000 + "}", "{" * 10_000 + "}" * 10_000),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "answer", "method"),
    [
        ("so $\\boxed{12.}$.", "12", "boxed"),
        ("\\boxed{1, 2, 3, \\ldots}", "1, 2, 3, \\ldots", "boxed"),
        ("48 + 24 = 72\n#### 72", "72", "hashes"),
        ("#### 1,234\n", "1,234", "hashes"),
        ("So the answer is $18$.", "18", "answer_is"),
        ("The final answer is 540", "540", "answer_is"),
        ("The answer is 5. Wait, the answer is 6.", "6", "answer_is"),
        ("\\boxed{7} and later The answer is 8.", "7", "boxed"),
        ("nothing here", None, None),
        (b"\\boxed{5}\xff", "5", "boxed"),
    ],
)
def test_extract_answer(text, answer, method):
    result = extract_answer(text)
    assert (result.answer, result.method) == (answer, method)


def test_extraction_is_linear_on_huge_inputs():
    import time

    start = time.perf_counter()
    for text in ("x" * 1_000_000, "\\boxed{" * 100_000, "The answer is " * 50_000, "#### " * 100_000):
        extract_answer(text)
    assert time.perf_counter() - start < 2.0
