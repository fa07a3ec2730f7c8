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
        # several boxes of one answer, as math-verify combines them
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "1, 2, 3", "boxed"),
        ("are \\[ \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. \\]", "-2, 1", "boxed"),
        ("$x_1 = \\boxed{3}$, $x_2 = \\boxed{5}$", "3, 5", "boxed"),
        ("\\boxed{(2,1)}, \\boxed{(1,2)} or \\boxed{(0,0)}", "(2,1), (1,2), (0,0)", "boxed"),
        ("$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$", "(3, 3), (1, 1)", "boxed"),
        ("First \\boxed{1}, but correcting: \\boxed{2}", "2", "boxed"),  # words between: only the last
        ("\\boxed{1} \\text{ is wrong; the answer is } \\boxed{2}", "2", "boxed"),
        ("\\boxed{} and \\boxed{5}", "5", "boxed"),
        # Minerva's format outranks an earlier box; other lead-ins; unanchored math and numbers
        ("so $\\boxed{200}$ ... Final Answer: The final answer is $10,455$. I hope it is correct.", "10,455", "answer_is"),
        ("Final Answer: The volume of $V$ is 120. I hope", "120", "answer_is"),
        ("The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.", "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}", "math"),
        ("Answer $ \\frac{1}{2} \\$ = \\frac{10}{9} $", "\\frac{1}{2} \\$ = \\frac{10}{9}", "math"),
        ("Answer \\[ \n 9 \n \\]", "9", "math"),
        ("$$x = 1$$ Therefore the error increases by 100%.", "100%", "number"),
        ("28 percent", "28 percent", "bare"),
        ("unbalanced \\boxed{5", None, None),  # a broken box is not guessed around
    ],
)
def test_extract_answer(text, answer, method):
    result = extract_answer(text)
    assert (result.answer, result.method) == (answer, method)


def test_extraction_is_linear_on_huge_inputs():
    import time

    start = time.perf_counter()
    for text in (
        "x" * 1_000_000, "\\boxed{" * 100_000, "The answer is " * 50_000, "#### " * 100_000, "\\[" * 300_000,
        "$" * 500_000, "\\boxed{1}, " * 100_000, "Final answer is " * 50_000, "1, " * 300_000,
    ):
        extract_answer(text)
    assert time.perf_counter() - start < 2.0
