"""(gold, response, expected status) cases in MATH and GSM8K styles, for both graders.

`both` cases must get the expected status from math_verify and from the normalising grader;
`math_verify_only` cases need symbolic equivalence the normalising grader does not attempt
(for those it must not say `correct` when the answer is wrong: it answers `incorrect`).
"""

C, I, U = "correct", "incorrect", "unparseable"


def boxed(answer: str, lead: str = "Working through the algebra step by step, we get ") -> str:
    return f"{lead}$\\boxed{{{answer}}}$."


BOTH = [
    # integers and signs
    ("5", boxed("5"), C), ("5", boxed("6"), I), ("-3", boxed("-3"), C), ("-3", boxed("3"), I),
    ("0", boxed("0"), C), ("100", boxed("100.0"), C), ("7", boxed("07"), C), ("12", boxed("12."), C),
    ("1000000", boxed("1,000,000"), C), ("1234", boxed("1,234"), C), ("1234", boxed("1,243"), I),
    # decimals and fractions
    ("0.5", boxed("\\frac{1}{2}"), C), ("\\frac{1}{2}", boxed("0.5"), C), ("\\frac{1}{2}", boxed("\\dfrac{1}{2}"), C),
    ("\\frac{1}{2}", boxed("\\tfrac12"), C), ("\\frac{1}{2}", boxed("1/2"), C), ("\\frac{1}{2}", boxed("\\frac{2}{4}"), C),
    ("\\frac{1}{3}", boxed("0.333"), I), ("\\frac{2}{3}", boxed("\\frac{3}{2}"), I), ("-\\frac{2}{3}", boxed("-\\frac{2}{3}"), C),
    ("-\\frac{2}{3}", boxed("\\frac{2}{3}"), I), ("2", boxed("2.0001"), I), ("2", boxed("2.00"), C), ("3.14", boxed("3.14"), C),
    ("3.14", boxed("3.15"), I), ("0.25", boxed(".25"), C), ("\\frac{7}{4}", boxed("1.75"), C), ("\\frac{7}{4}", boxed("1.7"), I),
    # units, text, degrees, percent, money
    ("12", boxed("12 \\text{ cm}"), C), ("12", boxed("12\\text{ inches}"), C), ("30", boxed("30^\\circ"), C), ("30", boxed("30^{\\circ}"), C),
    ("30", boxed("31^\\circ"), I), ("45", boxed("45 \\text{ degrees}"), C), ("50\\%", boxed("50\\%"), C), ("25", boxed("25\\%"), C),
    ("18", boxed("\\$18"), C), ("18.50", boxed("\\$18.50"), C), ("\\text{(C)}", boxed("\\text{(C)}"), C), ("5", boxed("x = 5"), C),
    ("5", boxed("x=6"), I), ("10", boxed("\\text{10}"), C),
    # radicals, pi, e (exact forms written the same way)
    ("\\sqrt{2}", boxed("\\sqrt{2}"), C), ("\\sqrt{2}", boxed("\\sqrt2"), C), ("\\sqrt{2}", boxed("\\sqrt{3}"), I),
    ("2\\sqrt{3}", boxed("2\\sqrt{3}"), C), ("\\pi", boxed("\\pi"), C), ("2\\pi", boxed("2\\pi"), C), ("2\\pi", boxed("3\\pi"), I),
    ("1-\\frac{1}{e}", boxed("1-\\frac{1}{e}"), C), ("1-\\frac{1}{e}", boxed("1+\\frac{1}{e}"), I), ("1-1/e", boxed("1+1/e"), I),
    # intervals, tuples, sets
    ("(1,2)", boxed("(1,2)"), C), ("(1,2)", boxed("(1, 2)"), C), ("(1,2)", boxed("[1,2]"), I), ("[2,5)", boxed("[2,5)"), C),
    ("[2,5)", boxed("[2,5]"), I), ("(-\\infty,3]", boxed("(-\\infty,3]"), C), ("(-\\infty,3]", boxed("(-\\infty,3)"), I),
    ("(3,4)", boxed("(4,3)"), I), ("(1,2,3)", boxed("(1,2,3)"), C), ("(1,2,3)", boxed("(1,2)"), I),
    ("\\{1,2\\}", boxed("\\{1,2\\}"), C), ("\\{1,2\\}", boxed("\\{2,1\\}"), C), ("\\{1,2\\}", boxed("\\{1,2,3\\}"), I),
    ("(\\frac{1}{2},3)", boxed("(0.5,3)"), C),
    # extraction: nesting, the last box, \fbox, boxed-space form
    ("\\frac{3}{4}", "First \\boxed{1}, but correcting: \\boxed{\\frac{3}{4}}", C), ("1", "First \\boxed{1}, but correcting: \\boxed{2}", I),
    ("7", "The result is \\fbox{7}.", C), ("9", "so the answer is \\boxed 9$", C), ("(1,2)", "\\boxed{\\left(1,2\\right)}", C),
    ("\\frac{1}{2}", "$\\boxed{\\frac{1}{2}}$", C),
    # unparseable responses
    ("5", "I am not sure what the answer is.", U), ("5", "", U), ("5", "The value is \\boxed{}", U), ("5", "unbalanced \\boxed{5", U),
    # GSM8K style
    ("72", "Natalia sold 48/2 = 24 clips in May. 48 + 24 = 72.\n#### 72", C), ("72", "48 + 24 = 71\n#### 71", I),
    ("10", "Weng earns 12/60 = $0.2 per minute. So 0.2 * 50 = $10.\n#### 10", C), ("1234", "#### 1,234", C),
    ("5", "Betty has 100 - 95 = 5 dollars left. The answer is 5.", C), ("5", "The answer is 6.", I),
    ("18", "Janet sells 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. The answer is $18.", C), ("3", "It takes 2 + 1 = 3 bolts. #### 3", C),
    ("70000", "The profit is 200000 - 130000 = 70000.\n#### 70,000", C), ("540", "3 * 3 * 60 = 540\nThe final answer is 540", C),
    ("20", "She needs 20 cups. #### 20", C), ("64", "#### 64.0", C), ("64", "#### 46", I), ("35", "The answer is: 35", C),
    ("260", "He has 160 + 100 = 260 marbles.\n#### 260", C), ("8", "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.", C),
    ("29", "9 + 20 is 29. The answer is 29.", C), ("33", "35 - 2 = 33 golf balls. The answer is 33.", C), ("33", "The answer is 32.", I),
]

MATH_VERIFY_ONLY = [
    ("x^2+1", boxed("1+x^2"), C), ("2x+3", boxed("3+2x"), C), ("\\frac{\\sqrt{2}}{2}", boxed("\\frac{1}{\\sqrt{2}}"), C),
    ("x^2+1", boxed("x^2-1"), I), ("\\frac{\\sqrt{2}}{2}", boxed("\\frac{\\sqrt{3}}{2}"), I), ("6", boxed("2\\cdot 3"), C),
    ("8", boxed("2^3"), C), ("9", boxed("2^3"), I), ("\\frac{1}{2}", boxed("\\frac{\\pi}{2\\pi}"), C), ("4", boxed("\\sqrt{16}"), C),
]

CASES = [(*case, "both") for case in BOTH] + [(*case, "math_verify_only") for case in MATH_VERIFY_ONLY]

# Hostile or broken responses: each must come back quickly with a non-correct status.
HOSTILE = [
    ("5", "\\boxed{9^{9^{9^{9}}}}"),
    ("5", "\\boxed{(10^{10})!}"),
    ("5", "\\boxed{100000000!}"),
    ("5", "\\boxed{2^{2^{40}}}"),
    ("5", "x" * 100_000),
    ("5", "\\boxed{" + "7" * 100_000 + "}"),
    ("5", "\\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}"),
    ("5", "\\boxed{" + "{" * 10_000),
    ("5", "}}}} \\boxed{5}}} {{{"[:6]),
    ("5", b"\\boxed{\xff\xfe\x80 5}"),
    ("5", ""),
    ("5", "\\boxed{__import__('os').system('touch /tmp/fpa_ray_pwned')}"),
    ("5", "\\boxed{eval(\"__import__('os').system('touch /tmp/fpa_ray_pwned')\")}"),
]
