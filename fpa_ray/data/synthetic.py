"""The embedded default's task: seeded multi-step arithmetic word problems with verifiable answers.

    Start with 38. Add 54, then multiply by 3, then add 81. What is the result?
    38 + 54 = 92. 92 * 3 = 276. 276 + 81 = 357. \\boxed{357}

Knobs set the difficulty (number of steps, operand sizes, a cap on intermediate values, division
that yields fractions) so a tiny model lands between 0% and 100%. Train, dev and test are split by
a hash of the problem text, so they never share a problem, whatever their sizes: test_percent of
the problem space is held out from train, and dev_percent of it is the dev split (recipes, lr,
lambda and rounds are chosen there), the rest test (reported, never chosen on). Held-out problems
are carved from the same bucket train always left out, so train and every warm start are the same
with or without a dev split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from fractions import Fraction

from fpa_ray.config import SyntheticTaskConfig

VERBS = {"+": "add {}", "-": "subtract {}", "*": "multiply by {}", "/": "divide by {}"}


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    solution: str  # step-by-step, ending in \boxed{answer}
    answer: str


def format_number(value: Fraction) -> str:
    """Integers as digits, other rationals as \\frac{p}{q} (negative sign in front)."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _apply(value: Fraction, op: str, operand: int) -> Fraction:
    return {"+": value + operand, "-": value - operand, "*": value * operand, "/": value / operand}[op]


def _draw(rng: random.Random, config: SyntheticTaskConfig) -> tuple[int, list[tuple[str, int]]] | None:
    start = rng.randint(1, config.operand_max)
    value = Fraction(start) if config.fractions else start  # ints without division: the same values, 2x faster
    ops = ["+", "-", "*"] + (["/"] if config.fractions else [])
    steps = []
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        op = rng.choice(ops)
        if op == "*":
            operand = rng.randint(2, config.multiplier_max)
        elif op == "/":
            operand = rng.randint(2, config.divisor_max)
        elif op == "-":
            if value < 1:
                return None
            operand = rng.randint(1, min(config.operand_max, int(value)))  # keep the running value >= 0
        else:
            operand = rng.randint(1, config.operand_max)
        value = _apply(value, op, operand)
        if value > config.value_max:
            return None
        steps.append((op, operand))
    return start, steps


def _prompt(start: int, steps: list[tuple[str, int]]) -> str:
    actions = [VERBS[op].format(operand) for op, operand in steps]
    prompt = f"Start with {start}. {actions[0][0].upper()}{actions[0][1:]}"
    return prompt + "".join(f", then {action}" for action in actions[1:]) + ". What is the result?"


def _solution(start: int, steps: list[tuple[str, int]]) -> tuple[str, str]:
    value, lines = Fraction(start), []
    for op, operand in steps:
        new = _apply(value, op, operand)
        lines.append(f"{format_number(value)} {op} {operand} = {format_number(new)}.")
        value = new
    answer = format_number(value)
    return " ".join(lines) + f" \\boxed{{{answer}}}", answer


def _bucket(prompt: str) -> float:
    """A stable number in [0, 100) from the problem text alone."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64 * 100


SPLITS = ("train", "dev", "test")


def split_of(prompt: str, config: SyntheticTaskConfig) -> str:
    bucket = _bucket(prompt)
    if bucket >= config.test_percent:
        return "train"
    return "dev" if bucket >= config.test_percent - config.dev_percent else "test"


def generate(config: SyntheticTaskConfig, split: str, count: int, seed: int = 0) -> list[Problem]:
    """`count` distinct problems of `split` ('train', 'dev' or 'test'), deterministic in (config, seed)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    # The dev split draws from its own stream; test keeps the stream it always had.
    rng = random.Random(f"{seed}:{split}")
    share = {"train": 100 - config.test_percent, "dev": config.dev_percent, "test": config.test_percent - config.dev_percent}[split]
    if share <= 0:
        raise ValueError(f"the task has no {split} split: dev_percent is {config.dev_percent}")
    limit = int(count * max(200.0, 400.0 / share)) + 10_000  # a 0.5% split takes ~200 draws per problem, more with rejects
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > limit:
            raise ValueError(f"could only draw {len(problems)} distinct {split} problems of {count}; widen the task knobs")
        drawn = _draw(rng, config)
        if drawn is None:
            continue
        prompt = _prompt(*drawn)
        if prompt in seen or split_of(prompt, config) != split:
            continue
        solution, answer = _solution(*drawn)
        seen.add(prompt)
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        problems.append(Problem(f"synthetic-{digest}", prompt, solution, answer))
    return problems
