"""Grader agreement on the test cases other graders ship: fpa_ray's two graders and math-verify called directly.

Cases (`grader_cases.jsonl` beside this file) were collected from the test suites of
huggingface/Math-Verify, hendrycks/math (`is_equiv`), NVIDIA/NeMo-Skills (`math_equal`) and
rllm-org/rllm; each row cites repository, path, commit and test, and keeps the verdict that
test asserts. Left out: tests whose verdict depends on a grader-specific flag (Math-Verify's
`precision`, `strict=False`, `allow_set_relation_comp`, expression-only matching; rllm's
format-reward and multi-answer settings) and non-string answers. One verdict is taken from a
later commit than the rest of its file, where upstream corrected it (the row's `note` says so:
`1 - 1/e` vs `1 + 1/e`, asserted equal at 5d148cf). Answer-against-answer suites
(is_equiv, math_equal) are posed as a response `The final answer is $\\boxed{prediction}$.`;
for a gold given as text its boxed answer (or the text without `$`) is the gold answer. Every
grader gets the same (gold, response) pairs; math-verify direct is
`verify(parse("$gold$"), parse(response))` with its defaults (LaTeX and expression extraction).

    python benchmarks/checks/grader_agreement.py [--show-misses]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fpa_ray.verifier.pool import GradingPool  # noqa: E402

CASES = Path(__file__).with_name("grader_cases.jsonl")


def load_cases(path: Path = CASES) -> list[dict]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def math_verify_direct(gold: str, response: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(response)))
    except Exception:  # noqa: BLE001 - the baseline as a user calls it: an exception is a miss
        return False


def tally(cases: list[dict], verdicts: list[bool]) -> dict[str, dict[str, int]]:
    """Per source (and 'all'): cases, agreements, false positives and false negatives."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"cases": 0, "agree": 0, "fp": 0, "fn": 0})
    for case, verdict in zip(cases, verdicts):
        for key in (case["source"], "all"):
            row = table[key]
            row["cases"] += 1
            row["agree"] += verdict == case["verdict"]
            row["fp"] += verdict and not case["verdict"]
            row["fn"] += case["verdict"] and not verdict
    return dict(table)


def grade_all(cases: list[dict]) -> tuple[dict[str, list[bool]], dict[str, float]]:
    """Verdicts per grader, and the longest check each pool ran (every case must come back)."""
    pairs = [(case["gold"], case["response"]) for case in cases]
    results, longest = {}, {}
    for grader in ("math_verify", "normalized"):
        pool = GradingPool(grader, workers=2)
        try:
            verdicts = pool.grade(pairs)
        finally:
            pool.close()
        results[f"fpa_ray {grader}"] = [v.status == "correct" for v in verdicts]
        longest[f"fpa_ray {grader}"] = max(v.seconds for v in verdicts)
    results["math-verify direct"] = [math_verify_direct(gold, response) for gold, response in pairs]
    return results, longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show-misses", action="store_true", help="print every case a grader gets wrong")
    args = parser.parse_args()
    cases = load_cases()
    results, longest = grade_all(cases)
    sources = sorted({case["source"] for case in cases}) + ["all"]
    print(f"{len(cases)} cases; agree/cases (false positives, false negatives)")
    print(f"| grader | {' | '.join(sources)} |")
    print(f"|---|{'---|' * len(sources)}")
    for name, verdicts in results.items():
        table = tally(cases, verdicts)
        cells = [f"{t['agree']}/{t['cases']} ({t['fp']}, {t['fn']})" for t in (table[s] for s in sources)]
        print(f"| {name} | {' | '.join(cells)} |")
    print("longest check: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in longest.items()))
    if args.show_misses:
        for name, verdicts in results.items():
            for case, verdict in zip(cases, verdicts):
                if verdict != case["verdict"]:
                    print(f"[{name}] expected {case['verdict']}: gold {case['gold'][:80]!r} response {case['response'][-100:]!r} ({case['source']} {case['test']})")


if __name__ == "__main__":
    main()
