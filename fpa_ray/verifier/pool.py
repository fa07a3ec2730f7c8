"""Grading with a hard, external time limit per check.

Every check runs in a worker process of a pebble ProcessPool; a check that outlives `timeout_s`
is killed with its process (which pebble replaces), so a pathological expression (a power tower
evaluated in C, where no signal can interrupt it) can stall neither the caller nor the next
check. One process more than `workers` is kept, so that while a killed one's replacement spawns
and imports (seconds, more on a loaded machine) the checks after it run on a warm one. Workers
start with `spawn` (forking a Ray actor's threads is unsafe) and run under an address-space
limit, so a runaway allocation fails inside the worker as MemoryError.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from pebble import ProcessExpired, ProcessPool

from fpa_ray.verifier.extract import extract_answer
from fpa_ray.verifier.graders import FALLBACK, GRADERS, GoldAnswerError, LibraryError

STATUSES = ("correct", "incorrect", "unparseable", "timeout", "error")
FALLBACK_MARK = "fallback:"  # how a verdict's detail starts when the fallback grader gave it (counted by the verify report)


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    extracted: str | None  # the final answer found in the response, kept for inspection
    grader: str
    seconds: float  # time the check ran in its worker (the limit, for a killed one)
    detail: str = ""  # why, for `error`

    @property
    def reward(self) -> float:
        return 1.0 if self.status == "correct" else 0.0


def _check(grader: str, gold: str, predicted: str, timeout_s: float) -> tuple[str, str, float]:
    """Runs in a worker process: (status, detail, seconds) of one comparison."""
    from math_verify.errors import TimeoutException  # a BaseException: `except Exception` misses it

    started = time.perf_counter()
    detail = ""
    try:
        try:
            result = GRADERS[grader](gold, predicted, timeout_s)
        except LibraryError as error:  # the library failed, the answer did not: the other grader decides
            detail = f"{FALLBACK_MARK} {FALLBACK[grader]} graded it; {grader} raised {error}"[:300]
            result = GRADERS[FALLBACK[grader]](gold, predicted, timeout_s)
        status = "unparseable" if result is None else "correct" if result else "incorrect"
    except TimeoutException:
        status, detail = "timeout", "math-verify's own time limit"
    except GoldAnswerError as error:
        status, detail = "error", str(error)
    except (Exception, RecursionError, MemoryError) as error:
        status, detail = "error", f"{type(error).__name__}: {str(error)[:200]}"
    return status, detail, time.perf_counter() - started


def _ready() -> None:
    """A no-op task: scheduling it starts the pool's workers."""


def _start_worker(memory_limit_mb: int | None) -> None:
    for grader in GRADERS:  # import and warm up here, not inside the first timed check
        _check(grader, "1", "1", 5.0)
    if memory_limit_mb:  # after the imports: the limit is on what a check may add
        with open("/proc/self/statm") as statm:  # the address space already mapped, in pages
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        limit = mapped + memory_limit_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class GradingPool:
    """Grades (gold, response) pairs with one grader, `workers` processes (and a spare), a hard limit per check."""

    def __init__(self, grader: str, workers: int = 1, timeout_s: float = 5.0, memory_limit_mb: int | None = 2048):
        if grader not in GRADERS:
            raise ValueError(f"unknown grader {grader!r}; known: {', '.join(GRADERS)}")
        self.grader, self.timeout_s = grader, timeout_s
        self._pool = ProcessPool(
            max_workers=workers + 1,  # the spare: a kill never leaves the next check waiting for a fresh process
            context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(memory_limit_mb,),
        )
        # pebble starts its workers at the first schedule: start them now, so that an actor's pools
        # (grader and cross grader) spawn and import side by side instead of one after the other.
        self._pool.schedule(_ready)

    def grade(self, pairs: Sequence[tuple[str | bytes, str | bytes]]) -> list[Verdict]:
        """One verdict per (gold, response) pair, in order; never raises for a bad response."""
        extractions = [extract_answer(response) for _, response in pairs]
        futures = [
            None if ex.answer is None else self._pool.schedule(_check, (self.grader, _text(gold), ex.answer, self.timeout_s), timeout=self.timeout_s)
            for (gold, _), ex in zip(pairs, extractions)
        ]
        verdicts = []
        for extraction, future in zip(extractions, futures):
            if future is None:
                verdicts.append(Verdict("unparseable", None, self.grader, 0.0, "no final answer found"))
                continue
            try:
                status, detail, seconds = future.result()
            except FutureTimeout:
                status, detail, seconds = "timeout", f"killed after {self.timeout_s}s", self.timeout_s
            except ProcessExpired as error:  # the worker died: out of memory, a crash in C
                status, detail, seconds = "error", f"grading process died ({error})", 0.0
            except Exception as error:
                status, detail, seconds = "error", f"{type(error).__name__}: {str(error)[:200]}", 0.0
            verdicts.append(Verdict(status, extraction.answer, self.grader, seconds, detail))
        return verdicts

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()
