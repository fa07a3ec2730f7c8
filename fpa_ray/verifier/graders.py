"""Graders: is an extracted answer equal to the gold answer?

- `math_verify` (default): Hugging Face math-verify, LaTeX extraction only. Its expression
  extraction calls sympy's parse_expr, which evaluates Python, so it is never enabled here.
- `normalized`: an independent grader in the style of the Qwen2.5-Math evaluator: string
  normalisation (\\text{}, units, degrees, percent, thousands separators, \\dfrac, spaces) and
  exact rational comparison of numbers, element-wise for tuples and intervals and as sets for
  \\{...\\}. No sympy at all, so it cannot be tricked into evaluating anything.

A grader returns True/False, or None when the prediction cannot be parsed; it raises
GoldAnswerError when the gold answer itself cannot be parsed, and LibraryError when the library
behind it fails (math-verify raising inside itself): the pool then asks the FALLBACK grader and
marks the verdict `fallback:` in its detail. Both run inside the grading pool's
worker processes (pool.py), which enforce the time limit from outside.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from importlib import metadata

from fpa_ray.verifier.expression import parse_expression, proportional, same_value

Grader = Callable[[str, str, float], "bool | None"]


class GoldAnswerError(ValueError):
    """The reference answer could not be parsed: a data problem, reported as status `error`."""


class LibraryError(RuntimeError):
    """math-verify raised inside itself: not a verdict. The pool falls back to the other grader and counts it."""


_SPACED_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:(?:\s|\\[ ,;]|\{,\}|~)\d{3})+)(?![\d])")
_GROUP_MARK = re.compile(r"\s|\\[ ,;]|\{,\}|~")


def _math_verify_input(answer: str) -> str:
    """An answer as math-verify parses it: one line (inline math stops at a line break), `1 000` as 1000."""
    answer = " ".join(answer.split())
    return _SPACED_THOUSANDS.sub(lambda match: _GROUP_MARK.sub("", match.group(1)), answer)


def _right_hand_side(answer: str) -> str | None:
    """What follows the last top-level `=` (`17 \\bmod 5 = 2` -> `2`), or None without one."""
    depth, last = 0, None
    for index, char in enumerate(answer):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == "=" and depth == 0 and answer[index - 1 : index] not in ("<", ">", "!", "\\"):
            last = index
    rest = answer[last + 1 :].strip() if last is not None else ""
    return rest or None


def grade_math_verify(gold: str, predicted: str, timeout_s: float) -> bool | None:
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    config = [LatexExtractionConfig()]
    # math-verify's own signal-based limits run in the worker's main thread (whole seconds);
    # the pool's kill is the hard limit behind them.
    seconds = max(1, math.ceil(timeout_s))

    def parsed(answer: str):
        return parse(f"${_math_verify_input(answer)}$", extraction_config=config, parsing_timeout=seconds, raise_on_error=True)

    try:
        gold_parsed = parsed(gold)
        if not gold_parsed:  # the other grader may still read it; if neither can, the gold is the problem
            raise LibraryError(f"math-verify cannot parse the gold answer {gold[:200]!r}")
        candidates = [predicted]
        right = _right_hand_side(predicted) if "=" not in gold else None
        if right is not None:  # the answer as the right-hand side of an equation in the box
            candidates.append(right)
        verdict = None
        for candidate in candidates:
            predicted_parsed = parsed(candidate)
            if predicted_parsed:
                verdict = bool(verify(gold_parsed, predicted_parsed, timeout_seconds=seconds, raise_on_error=True))
                if verdict:
                    return True
        return verdict
    except (TimeoutException, LibraryError):
        raise
    except Exception as error:  # noqa: BLE001 - anything else is math-verify failing, not the answer
        raise LibraryError(f"{type(error).__name__}: {str(error)[:200]}") from error


# --- the normalising grader -------------------------------------------------------------------

_MAX_DEPTH = 32  # nested brackets deeper than this are not an answer
_MAX_ITEMS = 64  # listed answers compared as a set, at most
_UNIT_WORDS = (
    "degrees", "degree", "units", "unit", "cm", "meters", "meter", "inches", "inch", "feet", "foot", "ft", "km",
    "miles", "mph", "hours", "hour", "minutes", "minute", "seconds", "second", "dollars", "dollar", "cents",
    "pounds", "students", "ways", "points", "days", "sq", "square",
)
_UNITS = re.compile(r"(?<=[\d}\s])\s*(?:\\(?:text|textnormal|mbox|mathrm)\{\s*)?(?:" + "|".join(_UNIT_WORDS) + r")\b\}?(?:\^?\{?[23]\}?)?\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|textnormal|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_TRAILING_TEXT = re.compile(r"^(-?[\d.,/]+)\s*\\(?:text|textnormal|mbox)\{[^{}]*\}$")  # `17\text{ any text}` is 17
_PERCENT_WORD = re.compile(r"(?<=\d)\s*(?:percent(?:age)?|pct)$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_MIXED = re.compile(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")  # 918\frac{1}{2} is 918.5
_SLASH = re.compile(r"^(-?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$")
_DECIMAL = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)$")
_SCIENTIFIC = re.compile(r"^(-?(?:\d+\.?\d*|\.\d+))(?:e|\\times10\^)\{?(-?\d+)\}?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LABEL_DIGITS = re.compile(r"_\{?\w+\}?")  # subscripts: x_1 is still a name
_RELATION_WORDS = ((r"\\(?:geq|ge|geqslant)(?![a-zA-Z])|≥", ">="), (r"\\(?:leq|le|leqslant)(?![a-zA-Z])|≤", "<="),
                   (r"\\(?:neq|ne)(?![a-zA-Z])|≠", "!="), (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"))
_LIST_WORD = re.compile(r"(?<![a-zA-Z\\])(?:and|or)(?![a-zA-Z])")
_MATRIX = re.compile(r"^\[?\\begin\{([pbvB]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}\]?$")
_BARE_VARIABLE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?$")


def normalize_answer(text: str) -> tuple[str, bool]:
    """Canonical string of an answer, and whether it carried a percent sign."""
    s = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", text.strip())  # `\\frac` written with the backslash doubled
    s = re.sub(r",\\!\s*|\s*\{\s*,\s*\}\s*", ",", s)  # 14{,}916 and 11,\! 111: thousands
    s = re.sub(r"(?<!\\)\\[!,;]", "", s)  # LaTeX spacing (`\\` before it is a matrix row break, kept)
    s = re.sub(r"(?<!\\)\\ ", " ", s).replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\q?quad(?![a-zA-Z])", " ", s).replace("\\(", "").replace("\\)", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac").replace("\\$", "").replace("$", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = _TRAILING_TEXT.sub(r"\1", s.strip())
    for _ in range(_MAX_DEPTH):  # innermost \text{...} first
        unwrapped = _TEXT_WRAP.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = re.sub(r"\^\{?\\circ\}?|°", "", s)
    percent = "%" in s or bool(_PERCENT_WORD.search(s))
    s = _PERCENT_WORD.sub("", s.replace("\\%", "").replace("%", ""))
    s = _UNITS.sub("", s).strip()
    for pattern, replacement in _RELATION_WORDS:
        s = re.sub(pattern, replacement, s)
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # x \in [2, 7]
    s = s.rstrip(".").rstrip("\\").strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<=[a-zA-Z])\s+(?=[a-zA-Z])", " ", s)  # `\pi r` keeps its space: `\pir` is no command
    s = re.sub(r"(?<![a-zA-Z])\s+|\s+(?![a-zA-Z])", "", s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # (C) is the choice C
    return s, percent


def _number(s: str) -> Fraction | float | None:
    """An exact rational (integers, decimals, \\frac{a}{b}, a/b, mixed numbers) or a float (scientific); None otherwise."""
    try:
        if _DECIMAL.match(s):
            return Fraction(s)
        if match := _FRAC.match(s):
            value = Fraction(match[2]) / Fraction(match[3])
            return -value if match[1] else value
        if match := _MIXED.match(s):
            value = int(match[2]) + Fraction(int(match[3]), int(match[4]))
            return -value if match[1] else value
        if match := _SLASH.match(s):
            return Fraction(match[1]) / Fraction(match[2])
        if match := _SCIENTIFIC.match(s):
            return float(match[1]) * 10.0 ** int(match[2])
    except (ValueError, ZeroDivisionError, OverflowError):  # huge digit strings, /0
        return None
    return None


def _numbers_equal(a: Fraction | float, b: Fraction | float) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b  # exact: 2 and 2.0001 differ
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)


def _split_top_level(inner: str, separators: str = ",;") -> list[str] | None:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(inner):
        if char in "([{":
            depth += 1
            if depth > _MAX_DEPTH:
                return None
        elif char in ")]}":
            depth -= 1
        elif char in separators and depth == 0:
            parts.append(inner[start:index])
            start = index + 1
    parts.append(inner[start:])
    return parts


def _sequence(s: str) -> tuple[str, list[str], str] | None:
    """(open bracket, items, close bracket) of a tuple, interval or set; None for anything else."""
    if s.startswith("\\{") and s.endswith("\\}"):
        opener, inner, closer = "{", s[2:-2], "}"
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        opener, inner, closer = s[0], s[1:-1], s[-1]
    else:
        return None
    if opener != "{":  # `(a)(b)` is a product, not a tuple: the first bracket closes only at the end
        depth = 0
        for char in s[:-1]:
            depth += (char in "([{") - (char in ")]}")
            if depth == 0:
                return None
    items = _split_top_level(inner)
    if items is None or len(items) < 2 and opener != "{":
        return None
    return opener, items, closer


def _list_items(s: str) -> list[str]:
    """A listed answer's items (`1, 2 and 3`, `\\{1,2\\}`, `{1,2}`, `\\pm 3`); [s] for one answer."""
    if s.startswith("\\pm") and len(s) > 3:
        return [f"-{s[3:]}", s[3:]]
    inner = s
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
    elif s.startswith("{") and s.endswith("}") and _split_top_level(s[1:-1], "") is not None:
        inner = s[1:-1]
    items = []
    for part in _split_top_level(_LIST_WORD.sub(",", inner)) or [inner]:
        if part:
            items.append(part)
    return items if 1 < len(items) <= _MAX_ITEMS or inner != s else [s]


def _relation(s: str) -> tuple[list[str], list[str]] | None:
    """([operands], [operators]) split at top-level =, <, <=, >, >=, !=; None without any."""
    operands, operators, depth, start, index = [], [], 0, 0, 0
    while index < len(s):
        char = s[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char in "<>=!":
            operator = s[index : index + 2] if s[index : index + 2] in ("<=", ">=", "!=") else char
            if operator == "!":
                index += 1
                continue
            operands.append(s[start:index])
            operators.append(operator)
            index += len(operator)
            start = index
            continue
        index += 1
    if not operators:
        return None
    operands.append(s[start:])
    return operands, operators


def _value_of(s: str, keep_label: bool) -> str:
    """`x = 5+6 = 11` -> `11`, `x \\approx 11` -> `11`, `\\frac{1}{3} \\approx 0.33` -> `\\frac{1}{3}` (unless keep_label)."""
    if "\\approx" in s:
        before, _, after = s.partition("\\approx")
        s = after if _BARE_VARIABLE.match(before) else before
    relation = _relation(s)
    if keep_label or relation is None or set(relation[1]) != {"="}:
        return s
    operands = relation[0]
    if len(operands) == 2 and re.search(r"[\d+\-]", _LABEL_DIGITS.sub("", operands[0])):
        return s  # `a+3z = 0` is an equation, not a label in front of 0; `x = ... = 11` is worked to its end
    return operands[-1]


def _expression_equal(gold: str, predicted: str) -> bool:
    a, b = parse_expression(gold), parse_expression(predicted)
    return a is not None and b is not None and same_value(a, b)


def _relations_equal(gold: str, predicted: str) -> bool:
    """One relation each (`2x+4y-3=0` and `y=-x/2+3/4`, `x>=5` and `5<=x`): the same after moving all to one side."""
    sides = []
    for text in (gold, predicted):
        relation = _relation(text)
        if relation is None or len(relation[1]) != 1:
            return False
        (left, right), (operator,) = relation
        if operator in (">", ">="):  # a > b is b < a
            left, right, operator = right, left, "<" if operator == ">" else "<="
        left_tree, right_tree = parse_expression(left), parse_expression(right)
        if left_tree is None or right_tree is None:
            return False
        sides.append((operator, ("-", left_tree, right_tree)))
    (gold_op, gold_tree), (predicted_op, predicted_tree) = sides
    return gold_op == predicted_op and proportional(gold_tree, predicted_tree, positive=gold_op in ("<", "<="))


def _interval_of_chain(s: str) -> str | None:
    """`a < x <= b` (x a name) as the interval `(a,b]`."""
    relation = _relation(s)
    if relation is None or len(relation[1]) != 2 or not set(relation[1]) <= {"<", "<="}:
        return None
    (low, middle, high), (first, second) = relation
    if _number(low) is None and low not in ("-\\infty",) or _number(high) is None or _number(middle) is not None:
        return None
    return f"{'(' if first == '<' else '['}{low},{high}{')' if second == '<' else ']'}"


def _matrix(s: str) -> list[list[str]] | None:
    match = _MATRIX.match(s)
    if not match:
        return None
    rows = [row for row in match[2].split("\\\\") if row]
    return [row.split("&") for row in rows]


def _same_items(gold: list[str], predicted: list[str], depth: int) -> bool:
    """As sets: every distinct gold item matched by its own predicted one."""
    gold, predicted = list(dict.fromkeys(gold)), list(dict.fromkeys(predicted))
    if len(gold) != len(predicted):
        return False
    remaining = list(predicted)
    for item in gold:
        match = next((i for i, other in enumerate(remaining) if _equal(item, other, depth + 1)), None)
        if match is None:
            return False
        remaining.pop(match)
    return True


def _equal(gold: str, predicted: str, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if gold == predicted:
        return True
    gold_number, predicted_number = _number(gold), _number(predicted)
    if gold_number is not None and predicted_number is not None:
        return _numbers_equal(gold_number, predicted_number)
    gold_items, predicted_items = _list_items(gold), _list_items(predicted)
    if len(gold_items) > 1 or len(predicted_items) > 1:  # listed answers: a set, as math-verify reads them
        return _same_items(gold_items, predicted_items, depth)
    gold_seq, predicted_seq = _sequence(gold), _sequence(predicted)
    if gold_seq is not None and predicted_seq is not None:
        (g_open, g_items, g_close), (p_open, p_items, p_close) = gold_seq, predicted_seq
        if (g_open, g_close) != (p_open, p_close) or len(g_items) != len(p_items):
            return False  # (1,2) and [1,2] are different intervals
        if g_open == "{":  # sets: order does not matter
            return _same_items(g_items, p_items, depth)
        return all(_equal(g, p, depth + 1) for g, p in zip(g_items, p_items))
    gold_matrix, predicted_matrix = _matrix(gold), _matrix(predicted)
    if gold_matrix is not None or predicted_matrix is not None:
        return (
            gold_matrix is not None and predicted_matrix is not None
            and [len(row) for row in gold_matrix] == [len(row) for row in predicted_matrix]
            and all(_equal(g, p, depth + 1) for g_row, p_row in zip(gold_matrix, predicted_matrix) for g, p in zip(g_row, p_row))
        )
    # An equation or approximation against a value: compare the value (`x = 11` and `11`, `(p,q)=(3,2)` and `(3,2)`).
    both_equations = gold.count("=") == predicted.count("=") == 1  # then compared as equations, labels kept
    gold_value, predicted_value = _value_of(gold, both_equations), _value_of(predicted, both_equations)
    if (gold_value, predicted_value) != (gold, predicted):
        return _equal(gold_value, predicted_value, depth + 1)
    for chain, other in ((gold, predicted), (predicted, gold)):
        interval = _interval_of_chain(chain)
        if interval is not None:
            return _equal(interval, other, depth + 1)
    if _relation(gold) is not None or _relation(predicted) is not None:
        return _relations_equal(gold, predicted)
    return _expression_equal(gold, predicted)


def grade_normalized(gold: str, predicted: str, timeout_s: float) -> bool | None:
    gold_norm, gold_percent = normalize_answer(gold)
    if not gold_norm:
        raise GoldAnswerError(f"the gold answer {gold[:200]!r} is empty after normalisation")
    predicted_norm, predicted_percent = normalize_answer(predicted)
    if not predicted_norm:
        return None
    if _equal(gold_norm, predicted_norm):
        return True
    if gold_percent or predicted_percent:  # 50\% may be written 0.5, and 0.5 as 50
        g, p = _number(gold_norm), _number(predicted_norm)
        if g is not None and p is not None:
            return any(_numbers_equal(g * factor, p) for factor in (Fraction(1, 100), Fraction(100)))
    return False


GRADERS: dict[str, Grader] = {"math_verify": grade_math_verify, "normalized": grade_normalized}
FALLBACK = {"math_verify": "normalized"}  # who decides when a grader's library fails (LibraryError)


def grader_version(name: str) -> str:
    """What to record in manifests: the grader and the version of the code behind it."""
    from fpa_ray.verifier.extract import EXTRACTION_VERSION

    if name == "math_verify":
        return f"math_verify=={metadata.version('math-verify')}+extract{EXTRACTION_VERSION}"
    if name == "normalized":
        return f"normalized==2+extract{EXTRACTION_VERSION}"
    raise ValueError(f"unknown grader {name!r}; known: {', '.join(GRADERS)}")
