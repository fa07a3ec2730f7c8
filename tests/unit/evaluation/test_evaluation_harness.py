"""Evaluation scoring from known verdicts, Total Gain/Loss on hand-built results, and the harness's keys."""

import pandas as pd
import pytest

from fpa_ray.config import load_config
from fpa_ray.evaluation import disagreements, overall, score
from fpa_ray.evaluation.harness import BenchmarkError, BenchmarkEvaluation, checkpoint_fingerprint, versus_baseline
from fpa_ray.evaluation.report import summary_markdown


def _verified(rows):
    columns = ["prompt_id", "extracted", "reward", "status", "cross_reward", "response_token_ids"]
    return pd.DataFrame([dict(zip(columns, row)) for row in rows])


KNOWN = _verified([
    # a: one right of four, the majority answer (7) wrong -> pass@1 .25, pass@k 1, maj 0
    ("a", "5", 1.0, "correct", 1.0, [1, 2]), ("a", "7", 0.0, "incorrect", 0.0, [1, 2]),
    ("a", "7", 0.0, "incorrect", 0.0, [1, 2, 3]), ("a", "7", 0.0, "incorrect", 1.0, [1]),
    # b: two right, the majority answer (9) right; one timeout -> pass@1 .5, pass@k 1, maj 1
    ("b", "3", 0.0, "incorrect", 0.0, [1]), ("b", "9", 1.0, "correct", 1.0, [1]),
    ("b", "9", 1.0, "correct", 0.0, [1, 2, 3, 4]), ("b", None, 0.0, "timeout", 0.0, [1]),
    # c: nothing extracted -> all zero
    ("c", None, 0.0, "unparseable", 0.0, []), ("c", "", 0.0, "unparseable", 0.0, []),
    ("c", None, 0.0, "unparseable", 0.0, [1]), ("c", None, 0.0, "error", 0.0, [1]),
])


def test_metrics_from_known_verdicts():
    result = score(KNOWN)
    assert result["pass_at_1"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert result["pass_at_k"] == pytest.approx(2 / 3)
    assert result["maj_at_k"] == pytest.approx(1 / 3)
    assert result["failure_share"] == pytest.approx(5 / 12)
    assert result["mean_response_tokens"] == pytest.approx(17 / 12)
    assert result["cross_pass_at_1"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert result["disagreements"] == 2
    assert list(disagreements(KNOWN).index) == [3, 6]
    with pytest.raises(ValueError, match="cross_grader"):
        disagreements(KNOWN.drop(columns="cross_reward"))


def test_overall_is_the_mean_over_benchmarks():
    scores = {"x": {"problems": 10, "pass_at_1": 0.2, "pass_at_k": 0.5, "disagreements": 3},
              "y": {"problems": 30, "pass_at_1": 0.6, "pass_at_k": 0.7, "maj_at_k": 0.65, "disagreements": 1}}
    result = overall(scores)
    assert result["pass_at_1"] == pytest.approx(0.4) and result["pass_at_k"] == pytest.approx(0.6)
    assert result["maj_at_k"] == pytest.approx(0.65)  # only y reports it
    assert result["problems"] == 40 and result["disagreements"] == 4 and result["benchmarks"] == 2


def test_total_gain_loss_against_a_hand_built_baseline():
    baseline = {"per_problem": {"m": {"p1": 0.0, "p2": 0.75, "p3": 0.5, "p4": 0.25}, "only_old": {"q": 1.0}}}
    current = {"m": {"per_problem": {"p1": 0.5, "p2": 0.25, "p3": 0.75, "p4": 0.0, "p5": 1.0}}, "only_new": {"per_problem": {"r": 1.0}}}
    result = versus_baseline(current, baseline, solved_threshold=0.5)
    assert set(result) == {"m"}
    assert (result["m"]["total_gain"], result["m"]["gained"], result["m"]["total_loss"], result["m"]["lost"]) == (1, ["p1"], 1, ["p2"])
    assert result["m"]["compared"] == 4 and result["m"]["baseline_pass_at_1"] == pytest.approx(1.5 / 4)
    # changes 0.5, -0.5, 0.25, -0.25 on the 4 shared problems: mean 0, sample std sqrt(0.625 / 3)
    assert result["m"]["difference"] == pytest.approx(0.0) and result["m"]["se"] == pytest.approx((0.625 / 3) ** 0.5 / 2)


def test_benchmark_names_resolve_to_labels_then_schemas(tmp_path):
    config = load_config("tiny-cpu", [f"output_dir={tmp_path}", "data.eval=[{name: synthetic, limit: 5}, {name: math500, label: m5, path: a.jsonl}]"])
    harness = BenchmarkEvaluation(config)
    assert [s.benchmark for s in harness.sources(None)] == ["synthetic", "m5"]
    chosen = harness.sources(["m5", "gsm8k"])
    assert (chosen[0].path, chosen[1].name, chosen[1].path) == ("a.jsonl", "gsm8k", None)
    with pytest.raises(BenchmarkError, match="benchmark 'aime'.*m5.*aime24"):
        harness.sources(["aime"])


def test_results_are_keyed_by_template_sampling_file_content_and_checkpoint(tmp_path):
    local = tmp_path / "b.jsonl"
    local.write_text('{"question": "q", "answer": "#### 1"}\n')

    def result_dir(*extra):
        config = load_config("tiny-cpu", [f"output_dir={tmp_path}", f"data.eval=[{{name: gsm8k, path: {local}}}]", *extra])
        return BenchmarkEvaluation(config).result_dir(tmp_path, config.data.eval[0])

    first = result_dir()
    assert first.parent.name == "gsm8k" and first.name.startswith("tiny-chat-k8-T0.7-")
    assert result_dir() == first
    changed = [result_dir("evaluation.samples=4"), result_dir("evaluation.temperature=1.0"), result_dir("seed=1"),
               result_dir("data.template=qwen25-math-cot"), result_dir("verifier.grader=normalized")]
    assert len({first, *changed}) == 6
    local.write_text('{"question": "q", "answer": "#### 2"}\n')
    assert result_dir() != first

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"1234")
    before = checkpoint_fingerprint(checkpoint)
    assert checkpoint_fingerprint(checkpoint) == before
    (checkpoint / "model.safetensors").write_bytes(b"12345")
    assert checkpoint_fingerprint(checkpoint) != before


def test_summary_markdown_has_a_row_per_benchmark_and_the_baseline_table():
    row = {"problems": 2, "pass_at_1": 0.5, "pass_at_k": 1.0, "maj_at_k": 0.5, "mean_response_tokens": 3.0, "failure_share": 0.0,
           "cross_pass_at_1": 0.25, "disagreements": 1, "throughput": {"problems_per_s": 4.0}}
    summary = {"checkpoint": "/c", "settings": {"k": 4, "temperature": 0.7, "top_p": 1.0, "seed": 0, "solved_threshold": 0.5},
               "benchmarks": {"m": row}, "overall": overall({"m": row}), "baseline": {"path": "/b/summary.json"},
               "versus_baseline": {"m": {"compared": 2, "baseline_pass_at_1": 0.25, "total_gain": 1, "total_loss": 0, "difference": 0.25, "se": 0.05}}}
    text = summary_markdown(summary)
    assert "| m | 2 | 50.0 | 100.0 | 50.0 | 3.0 | 0.0 | 25.0 | 1 | 4.00 |" in text
    assert "| m | 2 | 25.0 | 50.0 | +25.0 (5.0) | 1 | 0 |" in text and "pass@4" in text
