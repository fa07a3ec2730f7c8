import pytest

from fpa_ray.verifier.extract import last_boxed


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
