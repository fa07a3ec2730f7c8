"""A small LaTeX arithmetic reader for the normalising grader: no sympy, no eval.

`parse_expression` turns an answer such as `\\frac{x^2}{4} + 2\\sqrt{3}y` into a tree of
numbers, variables, + - * / ^, \\frac, \\sqrt, \\pi, |x| and a few functions, or None for
anything else. Two trees are compared by evaluating both in floating point at a few fixed
points (a polynomial identity test): equal everywhere to 1e-9 means equal. Floats, bounded
input size and nesting, and a cap on exponents keep a hostile answer from running long: an
overflow or a domain error is "not comparable", never an exception to the caller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

MAX_LENGTH = 400  # characters of one expression
MAX_DEPTH = 24  # nesting of brackets and groups
MAX_EXPONENT = 64.0  # |exponent| above this is not an answer's arithmetic
_REL_TOL = 1e-9

Node = tuple  # ("num", v) | ("var", name) | (op, a, b) | ("neg", a) | ("fn", name, a)

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+)|(?P<var>[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?)|(?P<op>[-+*/^()\[\]{}|!,]))"
)
_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "ln": math.log, "log": math.log, "exp": math.exp,
    "arcsin": math.asin, "arccos": math.acos, "arctan": math.atan, "sec": lambda x: 1 / math.cos(x),
    "csc": lambda x: 1 / math.sin(x), "cot": lambda x: 1 / math.tan(x),
}
_CONSTANTS = {"pi": math.pi, "infty": math.inf}
_TIMES = ("cdot", "times")
# Fixed, so that a verdict never depends on chance; every variable takes a negative value at one of
# them, so that sqrt(v^2) and v (or |x| and x) differ.
_POINTS = (0.7319, 1.4142, 2.2361, -0.5772)


class _Reject(Exception):
    """Not an expression this reader takes."""


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise _Reject
        position = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.index, self.depth = tokens, 0, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise _Reject
        self.index += 1
        return token

    def nested(self, parse: Callable[[], Node]) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject
        try:
            return parse()
        finally:
            self.depth -= 1

    def expression(self) -> Node:
        node = self.term()
        while (token := self.peek()) and token[1] in "+-":
            self.take()
            node = ("+" if token[1] == "+" else "-", node, self.term())
        return node

    def term(self) -> Node:
        node = self.signed()
        while (token := self.peek()) is not None:
            if token[1] in ("*", "/") or token[0] == "cmd" and token[1][1:] in _TIMES:
                self.take()
                node = ("/" if token[1] == "/" else "*", node, self.signed())
            elif token[0] in ("num", "var") or token[1] in ("(", "{") or token[0] == "cmd" and token[1][1:] not in _TIMES:
                node = ("*", node, self.power())  # implicit product: 2x, 3\sqrt{2}, (x+1)(x-1); not `|`, which may close
            else:
                break
        return node

    def signed(self) -> Node:
        token = self.peek()
        if token and token[1] in "+-":
            self.take()
            inner = self.nested(self.signed)
            return inner if token[1] == "+" else ("neg", inner)
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if (token := self.peek()) and token[1] == "^":
            self.take()
            return ("^", base, self.nested(self.signed))
        return base

    def group(self) -> Node:
        """{...} or a single token (\\frac12)."""
        token = self.peek()
        if token and token[1] == "{":
            self.take()
            node = self.nested(self.expression)
            self.take("}")
            return node
        if token and token[0] == "num" and len(token[1]) > 1 and "." not in token[1]:
            self.take()  # \frac12: one digit per argument
            self.tokens.insert(self.index, ("num", token[1][1:]))
            return ("num", float(token[1][0]))
        return self.atom()

    def atom(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind == "var":
            return ("var", re.sub(r"[{}]", "", value))
        if value in ("(", "{", "["):
            node = self.nested(self.expression)
            self.take({"(": ")", "{": "}", "[": "]"}[value])
            return node
        if value == "|":
            node = self.nested(self.expression)
            self.take("|")
            return ("fn", "abs", node)
        if kind == "cmd":
            name = value[1:]
            if name in ("frac", "dfrac", "tfrac", "cfrac"):
                numerator = self.nested(self.group)
                return ("/", numerator, self.nested(self.group))
            if name == "sqrt":
                if (token := self.peek()) and token[1] == "[":
                    self.take()
                    degree = self.nested(self.expression)
                    self.take("]")
                    return ("^", self.nested(self.group), ("/", ("num", 1.0), degree))
                return ("^", self.nested(self.group), ("num", 0.5))
            if name in _CONSTANTS:
                return ("num", _CONSTANTS[name])
            if name in _FUNCTIONS:
                return ("fn", name, self.nested(self.power))
        raise _Reject


def parse_expression(text: str) -> Node | None:
    """The arithmetic tree of an answer, or None when it is not plain arithmetic (or too big)."""
    if len(text) > MAX_LENGTH:
        return None
    try:
        parser = _Parser(_tokens(text))
        node = parser.expression()
        return node if parser.index == len(parser.tokens) else None
    except (_Reject, RecursionError, ValueError):
        return None


def variables(node: Node) -> set[str]:
    if node[0] == "var":
        return {node[1]}
    return set().union(*(variables(child) for child in node[1:] if isinstance(child, tuple)))


def evaluate(node: Node, point: dict[str, float]) -> float:
    """Float value at `point`; raises ArithmeticError/ValueError where undefined or too large."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        return point[node[1]]
    if kind == "neg":
        return -evaluate(node[1], point)
    if kind == "fn":
        argument = evaluate(node[2], point)
        return abs(argument) if node[1] == "abs" else _FUNCTIONS[node[1]](argument)
    a, b = evaluate(node[1], point), evaluate(node[2], point)
    if kind == "+":
        return a + b
    if kind == "-":
        return a - b
    if kind == "*":
        return a * b
    if kind == "/":
        return a / b
    if abs(b) > MAX_EXPONENT or abs(a) > 1e12:
        raise OverflowError("exponent out of range")
    result = a**b
    if isinstance(result, complex):
        raise ValueError("complex power")
    return result


def _points(names: set[str]) -> list[dict[str, float]]:
    ordered = sorted(names)
    return [{name: _POINTS[(shift + i) % len(_POINTS)] + 0.1 * i for i, name in enumerate(ordered)} for shift in range(len(_POINTS))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12) or (math.isinf(a) and a == b)


def same_value(a: Node, b: Node) -> bool:
    """True when both trees agree at every test point (and are defined at one at least)."""
    defined = 0
    for point in _points(variables(a) | variables(b)):
        try:
            x, y = evaluate(a, point), evaluate(b, point)
        except (ArithmeticError, ValueError):
            continue
        if math.isnan(x) or math.isnan(y) or not _close(x, y):
            return False
        defined += 1
    return defined > 0


def proportional(a: Node, b: Node, positive: bool) -> bool:
    """a = c * b for one constant c != 0 (c > 0 when `positive`): the same equation or inequality."""
    ratio = None
    for point in _points(variables(a) | variables(b)):
        try:
            x, y = evaluate(a, point), evaluate(b, point)
        except (ArithmeticError, ValueError):
            continue
        if abs(y) < 1e-12 or abs(x) < 1e-12:
            if not (abs(x) < 1e-12 and abs(y) < 1e-12):
                return False
            continue
        if ratio is None:
            ratio = x / y
        elif not _close(ratio, x / y):
            return False
    return ratio is not None and (ratio > 0 or not positive)
