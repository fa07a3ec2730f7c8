import re
from fractions import Fraction

import pytest
from pydantic import ValidationError

from fpa_ray.data.synthetic import SyntheticTaskConfig, format_number, generate
from fpa_ray.verifier.extract import last_boxed

NUMBER = r"(-?\\frac\{\d+\}\{\d+\}|\d+)"
STEP = re.compile(rf"{NUMBER} ([-+*/]) (\d+) = {NUMBER}\.")


def _value(text: str) -> Fraction:
    match = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", text)
    return Fraction(int(match[2]), int(match[3])) * (-1 if match[1] else 1) if match else Fraction(int(text))


def _check_solution(problem, config):
    steps = STEP.findall(problem.solution)
    assert config.min_steps <= len(steps) <= config.max_steps, problem
    start = int(re.match(r"Start with (\d+)\.", problem.prompt)[1])
    value = Fraction(start)
    for left, op, operand, right in steps:
        assert _value(left) == value
        value = {"+": value + int(operand), "-": value - int(operand), "*": value * int(operand), "/": value / int(operand)}[op]
        assert _value(right) == value and 0 <= value <= config.value_max
    assert last_boxed(problem.solution) == problem.answer == format_number(value)


def test_same_seed_same_data_and_other_seed_other_data():
    config = SyntheticTaskConfig()
    assert generate(config, "train", 200, seed=3) == generate(config, "train", 200, seed=3)
    assert generate(config, "train", 200, seed=3) != generate(config, "train", 200, seed=4)
    # A longer draw starts with the shorter one: sizes can grow without reshuffling.
    assert generate(config, "train", 300, seed=3)[:200] == generate(config, "train", 200, seed=3)


def test_train_dev_and_test_never_share_a_problem_and_the_dev_split_leaves_train_and_test_streams_alone():
    config = SyntheticTaskConfig()
    train = {p.prompt for seed in (0, 1) for p in generate(config, "train", 3000, seed=seed)}
    dev = {p.prompt for p in generate(config, "dev", 300)}
    test = generate(config, "test", 2000)  # a test split big enough to resolve half a point
    assert len({p.prompt for p in test}) == 2000 and len(dev) == 300
    assert not train & dev and not train & {p.prompt for p in test} and not dev & {p.prompt for p in test}
    no_dev = SyntheticTaskConfig(dev_percent=0)
    assert generate(no_dev, "train", 500) == generate(config, "train", 500)  # the same warm start with or without dev
    assert {p.prompt for p in test[:300]} <= {p.prompt for p in generate(no_dev, "test", 1500)}  # test's stream, thinned
    with pytest.raises(ValueError, match="no dev split"):
        generate(no_dev, "dev", 1)


@pytest.mark.parametrize(
    "config",
    [SyntheticTaskConfig(), SyntheticTaskConfig(min_steps=4, max_steps=5, value_max=100_000), SyntheticTaskConfig(fractions=True)],
)
def test_solutions_are_correct_arithmetic_ending_in_the_boxed_answer(config):
    problems = generate(config, "train", 400, seed=1)
    assert len({p.id for p in problems}) == len({p.prompt for p in problems}) == 400
    for problem in problems:
        _check_solution(problem, config)
    if config.fractions:
        assert any("\\frac" in p.answer for p in problems)


def test_knobs_are_validated():
    with pytest.raises(ValidationError, match="min_steps"):
        SyntheticTaskConfig(min_steps=4, max_steps=2)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SyntheticTaskConfig(steps=3)
    with pytest.raises(ValueError, match="split must be"):
        generate(SyntheticTaskConfig(), "validation", 1)
    with pytest.raises(ValidationError, match="carved out of it"):
        SyntheticTaskConfig(test_percent=1, dev_percent=1)
    with pytest.raises(ValueError, match="distinct test problems"):
        generate(SyntheticTaskConfig(min_steps=1, max_steps=1, operand_max=3, multiplier_max=2), "test", 100)
