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
_UNIT_WORDS = (
    "degrees", "degree", "units", "unit", "cm", "meters", "meter", "inches", "inch", "feet", "foot", "ft", "km",
    "miles", "mph", "hours", "hour", "minutes", "minute", "seconds", "second", "dollars", "dollar", "cents",
    "pounds", "students", "ways", "points", "days", "sq", "square",
)
_UNITS = re.compile(r"(?<=[\d}\s])\s*(?:\\(?:text|mbox|mathrm)\{\s*)?(?:" + "|".join(_UNIT_WORDS) + r")\b\}?(?:\^?\{?[23]\}?)?\s*$")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_SLASH = re.compile(r"^(-?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$")
_DECIMAL = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)$")
_SCIENTIFIC = re.compile(r"^(-?(?:\d+\.?\d*|\.\d+))(?:e|\\times10\^)\{?(-?\d+)\}?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")


def normalize_answer(text: str) -> tuple[str, bool]:
    """Canonical string of an answer, and whether it carried a percent sign."""
    s = text.strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    for _ in range(_MAX_DEPTH):  # innermost \text{...} first
        unwrapped = _TEXT_WRAP.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = re.sub(r"\^\{?\\circ\}?|°", "", s)
    percent = "%" in s
    s = s.replace("\\%", "").replace("%", "")
    s = _UNITS.sub("", s).strip()
    s = _ASSIGNMENT.sub("", s)
    s = s.rstrip(".").strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    return s, percent


def _number(s: str) -> Fraction | float | None:
    """An exact rational (integers, decimals, \\frac{a}{b}, a/b) or a float (scientific); None otherwise."""
    try:
        if _DECIMAL.match(s):
            return Fraction(s)
        if match := _FRAC.match(s):
            value = Fraction(match[2]) / Fraction(match[3])
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


def _split_top_level(inner: str) -> list[str] | None:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(inner):
        if char in "([{":
            depth += 1
            if depth > _MAX_DEPTH:
                return None
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
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
    items = _split_top_level(inner)
    if items is None or len(items) < 2 and opener != "{":
        return None
    return opener, items, closer


def _equal(gold: str, predicted: str, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if gold == predicted:
        return True
    gold_number, predicted_number = _number(gold), _number(predicted)
    if gold_number is not None and predicted_number is not None:
        return _numbers_equal(gold_number, predicted_number)
    gold_seq, predicted_seq = _sequence(gold), _sequence(predicted)
    if gold_seq is None or predicted_seq is None:
        return False
    (g_open, g_items, g_close), (p_open, p_items, p_close) = gold_seq, predicted_seq
    if (g_open, g_close) != (p_open, p_close) or len(g_items) != len(p_items):
        return False  # (1,2) and [1,2] are different intervals
    if g_open == "{":  # sets: order does not matter
        remaining = list(p_items)
        for item in g_items:
            match = next((i for i, other in enumerate(remaining) if _equal(item, other, depth + 1)), None)
            if match is None:
                return False
            remaining.pop(match)
        return True
    return all(_equal(g, p, depth + 1) for g, p in zip(g_items, p_items))


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
