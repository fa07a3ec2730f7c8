"""The grading pool's hard limit: hung, huge and hostile inputs come back with a verdict, quickly."""

import time

import pytest

from fpa_ray.verifier.pool import STATUSES, GradingPool

from tests.helpers.verifier_cases import HOSTILE


@pytest.fixture(scope="module")
def pool():
    pool = GradingPool("math_verify", workers=1, timeout_s=1.5)
    yield pool
    pool.close()


def test_hostile_inputs_get_non_correct_verdicts_and_the_pool_keeps_serving(pool, tmp_path):
    pairs = [pair for hostile in HOSTILE for pair in (hostile, ("5", "\\boxed{5}"))]
    start = time.perf_counter()
    verdicts = pool.grade(pairs)
    elapsed = time.perf_counter() - start
    for (_, response), verdict in zip(pairs, verdicts):
        assert verdict.status in STATUSES
        if verdict.extracted != "5":
            assert verdict.status != "correct", (response[:60], verdict)
        assert verdict.seconds <= 1.5 + 0.3, (response[:60], verdict)
    assert [v.status for v in verdicts[1::2]] == ["correct"] * len(HOSTILE)  # served after every hostile one
    # Each check is bounded by the limit (plus a worker restart after a kill): no hostile input stalls the pool.
    assert elapsed < len(HOSTILE) * (1.5 + 2.0)


def test_a_check_hung_in_c_is_killed_from_outside(pool):
    # 9^(9^(9^9)) is computed inside one C call, where math-verify's signal cannot interrupt it.
    verdict = pool.grade([("5", "\\boxed{9^{9^{9^{9}}}}")])[0]
    assert verdict.status == "timeout" and "killed after" in verdict.detail
    start = time.perf_counter()
    assert pool.grade([("7", "\\boxed{7}")])[0].status == "correct"
    # The spare process serves it at once; without one it waits for the replacement to spawn and
    # import math-verify and sympy (0.45 s measured on this machine under load, seconds on a busy one).
    assert time.perf_counter() - start < 0.25


def test_both_graders_and_unknown_grader():
    with pytest.raises(ValueError, match="unknown grader 'sympy'"):
        GradingPool("sympy")
    normalized = GradingPool("normalized", timeout_s=2.0)
    try:
        assert [v.status for v in normalized.grade([("5", "\\boxed{5}"), ("5", "#### 6"), ("5", "no answer")])] == [
            "correct", "incorrect", "unparseable",
        ]
    finally:
        normalized.close()
