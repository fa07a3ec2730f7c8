"""Pair building, labelled rows, scoring and the ledger: pure functions on hand-made frames."""

import json

import pandas as pd
import pytest

from transformers import AutoTokenizer

from fpa_ray.accounting import Ledger
from fpa_ray.config import TinyModelConfig, load_config
from fpa_ray.data.builder import build_pairs, build_unpaired, content_hash, cut_at_divergence
from fpa_ray.data.synthetic import SyntheticTaskConfig, generate
from fpa_ray.evaluation import paired_difference, score, score_by_benchmark, total_gain_loss
from fpa_ray.evaluation.run_report import curve_point
from fpa_ray.pipelines.offline import OfflinePipeline
from fpa_ray.run_files import write_json
from fpa_ray.tiny import build_tiny_policy


def _samples(outcomes: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for prompt_id, rewards in outcomes.items():
        for index, reward in enumerate(rewards):
            rows.append({
                "prompt_id": prompt_id, "sample_index": index, "prompt": f"P {prompt_id}", "answer": "1",
                "response": f"{prompt_id} response {index}", "prompt_token_ids": [1, 2], "response_token_ids": [3, index + 10],
                "reward": float(reward),
            })
    return pd.DataFrame(rows)


def test_pairs_cap_and_filter_counts():
    samples = _samples({"a": [1, 0, 0, 1], "b": [1, 1], "c": [0, 0, 0], "d": [0, 1]})
    pairs, counts = build_pairs(samples, pairs_per_prompt=3, seed=0)
    assert counts == {"samples": 11, "prompts": 4, "prompts_all_correct": 1, "prompts_all_incorrect": 1, "prompts_mixed": 2,
                      "pairs_possible": 4 + 1, "pairs": 3 + 1}
    assert list(pairs["prompt_id"]) == ["a"] * 3 + ["d"]
    for row in pairs.itertuples():  # chosen always a correct sample, rejected an incorrect one of the same prompt
        assert row.chosen_sample_index in {"a": (0, 3), "d": (1,)}[row.prompt_id]
        assert row.rejected_sample_index in {"a": (1, 2), "d": (0,)}[row.prompt_id]
        assert row.chosen_token_ids[-1] == row.chosen_sample_index + 10
    assert len({(r.chosen_sample_index, r.rejected_sample_index) for r in pairs.itertuples() if r.prompt_id == "a"}) == 3
    again, _ = build_pairs(samples.sample(frac=1.0, random_state=1), pairs_per_prompt=3, seed=0)
    assert content_hash(again) == content_hash(pairs)  # row order of the input does not matter
    other_seed, _ = build_pairs(samples, pairs_per_prompt=3, seed=1)
    assert len(other_seed) == 4


def test_rejected_cut_at_the_first_wrong_token():
    assert cut_at_divergence([5, 6, 7, 8, 9], [5, 6, 1, 2, 3, 4, 0], keep=2) == [5, 6, 1, 2]
    assert cut_at_divergence([5, 6], [5, 6, 7, 8, 9], keep=1) == [5, 6, 7]  # a longer rejected: it departs where the chosen ends
    assert cut_at_divergence([5, 6, 7], [1, 2], keep=4) == [1, 2]
    samples = pd.DataFrame([
        {"prompt_id": "a", "sample_index": 0, "prompt": "p", "answer": "3", "response": "1+2=3", "prompt_token_ids": [9],
         "response_token_ids": [1, 2, 3, 4, 5, 6], "reward": 1.0},
        {"prompt_id": "a", "sample_index": 1, "prompt": "p", "answer": "3", "response": "1+2=4 4*2=8", "prompt_token_ids": [9],
         "response_token_ids": [1, 2, 3, 7, 8, 9, 10, 11], "reward": 0.0},
    ])
    pairs, counts = build_pairs(samples, 4, 0, rejected_cut="divergence", divergence_tokens=2, decode=lambda ids: "-".join(map(str, ids)))
    assert list(pairs["rejected_token_ids"][0]) == [1, 2, 3, 7, 8] and pairs["rejected"][0] == "1-2-3-7-8"
    assert list(pairs["chosen_token_ids"][0]) == [1, 2, 3, 4, 5, 6] and counts["rejected_tokens_cut"] == 3
    with pytest.raises(ValueError, match="needs decode"):
        build_pairs(samples, 4, 0, rejected_cut="divergence")


def test_unpaired_rows_keep_mixed_prompts_with_labels():
    rows, counts = build_unpaired(_samples({"a": [1, 0], "b": [1, 1], "c": [0]}), seed=0)
    assert list(zip(rows["prompt_id"], rows["label"])) == [("a", True), ("a", False)]
    assert counts["rows"] == 2 and counts["desirable"] == 1 and counts["prompts_all_correct"] == 1


def test_score_and_total_gain_loss():
    verified = pd.DataFrame({"prompt_id": ["x", "x", "y", "y", "z", "z"], "reward": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]})
    result = score(verified)
    assert result["pass_at_1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3) and result["pass_at_k"] == pytest.approx(2 / 3)
    assert result["per_problem"] == {"x": 0.5, "y": 0.0, "z": 1.0} and result["samples_per_problem"] == 2
    change = total_gain_loss({"x": 0.5, "y": 0.0, "z": 1.0}, {"x": 0.25, "y": 0.75, "z": 1.0, "w": 1.0})
    assert change == {"total_gain": 1, "total_loss": 1, "gained": ["y"], "lost": ["x"], "compared": 3}
    paired = paired_difference({"x": 0.5, "y": 0.0, "z": 1.0}, {"x": 0.25, "y": 0.75, "z": 1.0, "w": 1.0})
    # per-problem changes -0.25, +0.75, 0 ("w" was not evaluated before): mean 1/6, SE = sample std / sqrt(3)
    diffs = [-0.25, 0.75, 0.0]
    std = (sum((d - 1 / 6) ** 2 for d in diffs) / 2) ** 0.5
    assert paired["problems"] == 3 and paired["difference"] == pytest.approx(1 / 6) and paired["se"] == pytest.approx(std / 3 ** 0.5)


def test_each_benchmark_is_scored_on_its_own_rows_and_compared_with_its_own_start():
    verified = pd.DataFrame({"prompt_id": ["d1", "d1", "d2", "d2", "t1", "t1"], "reward": [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]})
    scores = score_by_benchmark(verified, {"dev": {"d1", "d2"}, "test": {"t1"}})
    assert scores["dev"]["pass_at_1"] == pytest.approx(0.75) and scores["dev"]["problems"] == 2
    assert scores["test"]["pass_at_1"] == 0.0 and scores["test"]["per_problem"] == {"t1": 0.0}
    start = {"point": "start", "per_problem": {}, "benchmarks": {"test": {"pass_at_1": 0.0, "pass_at_k": 0.0, "per_problem": {"t1": 0.0, "t2": 0.5}}}}
    later = {"point": "after round 1", "per_problem": {}, "cpu_hours": 1.0,
             "benchmarks": {"test": {"pass_at_1": 0.5, "pass_at_k": 1.0, "per_problem": {"t1": 0.5, "t2": 0.5}}}}
    point = curve_point(later, start)
    assert "per_problem" not in point and point["cpu_hours"] == 1.0  # curve.json keeps no per-problem maps
    assert point["benchmarks"]["test"] == {"pass_at_1": 0.5, "pass_at_k": 1.0, "vs_start": pytest.approx(0.25), "vs_start_se": pytest.approx(0.25),
                                           "problems": 2}


def test_rounds_stop_once_the_first_benchmark_has_not_improved_for_the_patience(tmp_path):
    def points(*dev):  # the start, then per round a snapshot (ignored) and the round's final policy
        made = [{"point": "start", "benchmarks": {"dev": {"pass_at_1": dev[0]}}}]
        for r, value in enumerate(dev[1:], start=1):
            made += [{"point": f"round {r} step 5", "benchmarks": {"dev": {"pass_at_1": 0.99}}},
                     {"point": f"after round {r}", "benchmarks": {"dev": {"pass_at_1": value}}}]
        return made

    dev_first = [f"output_dir={tmp_path}", "data.eval=[{name: synthetic, split: dev, label: dev}, {name: synthetic, split: test, label: test}]"]
    once = OfflinePipeline(load_config("tiny-cpu", [*dev_first, "rounds=5", "rounds_patience=1"]), log=lambda _: None)
    assert not once.plateaued(points(0.2, 0.3)) and once.plateaued(points(0.2, 0.3, 0.3))  # a tie is no gain
    assert once.plateaued(points(0.2, 0.1))  # the start counts: a first round below it stops the run
    twice = OfflinePipeline(load_config("tiny-cpu", [*dev_first, "rounds=5", "rounds_patience=2"]), log=lambda _: None)
    assert not twice.plateaued(points(0.2, 0.3, 0.25)) and twice.plateaued(points(0.2, 0.3, 0.25, 0.29))
    assert not OfflinePipeline(load_config("tiny-cpu", [*dev_first, "rounds=5"]), log=lambda _: None).plateaued(points(0.2, 0.1, 0.1))


def test_majority_vote_failure_share_and_length_from_verdicts():
    verified = pd.DataFrame({
        "prompt_id": ["x"] * 4 + ["y"] * 4 + ["z"] * 2,
        "extracted": ["5", "7", "7", None, "3", "4", "4", "3", None, None],
        "reward": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        "status": ["correct", "incorrect", "incorrect", "unparseable", "correct", "incorrect", "incorrect", "correct", "unparseable", "timeout"],
        "response_token_ids": [[1, 2], [1], [1], [1, 2, 3], [1], [1], [1], [1], [1, 2], [1, 2]],
    })
    result = score(verified)
    # x: 7 outvotes 5 (wrong); y: 3 and 4 tie, 3 came first (right); z: no answer (wrong). pass@1 is another thing.
    assert result["maj_at_k"] == pytest.approx(1 / 3) and result["pass_at_1"] == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert result["pass_at_k"] == pytest.approx(2 / 3) and result["failure_share"] == pytest.approx(0.3)
    assert result["mean_response_tokens"] == pytest.approx(15 / 10)


def test_ledger_charges_resources_times_wall_time_even_on_failure(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with ledger.stage("generate", 1, cpus=2, gpus=1):
        pass
    with pytest.raises(RuntimeError):
        with ledger.stage("train", 1, cpus=4):
            raise RuntimeError("boom")
    entries = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["completed"]) for e in entries] == [("generate", True), ("train", False)]
    assert entries[0]["gpu_seconds"] == pytest.approx(entries[0]["wall_s"]) and entries[0]["cpu_seconds"] == pytest.approx(2 * entries[0]["wall_s"])
    assert set(ledger.totals()) == {"generate", "train"}


def test_build_stage_cuts_rejected_responses_with_the_policy_tokenizer(tmp_path):
    problems = generate(SyntheticTaskConfig(), "train", 200)
    policy = build_tiny_policy(tmp_path / "policy", TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    right, wrong = "38 + 54 = 92. 92 * 3 = 276. \\boxed{276}", "38 + 54 = 93. 93 * 3 = 279. \\boxed{279}"
    rows = [{"prompt_id": "a", "sample_index": i, "prompt": "p", "answer": "276", "response": text, "prompt_token_ids": [1],
             "response_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"], "reward": reward}
            for i, (text, reward) in enumerate([(right, 1.0), (wrong, 0.0)])]
    round_dir = tmp_path / "runs" / "cut" / "round_1"
    (round_dir / "verified" / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(round_dir / "verified" / "data" / "part-0.parquet")
    write_json(round_dir / "verified" / "manifest.json", {"complete": True, "graders": ["normalized==1"]})
    write_json(round_dir / "samples" / "manifest.json", {"settings": {"policy": str(policy), "checkpoint": str(policy), "sampling": {}}})
    config = load_config("tiny-cpu", [f"output_dir={tmp_path / 'runs'}", "name=cut", "build.rejected_cut=divergence", "build.divergence_tokens=3"])
    dataset = OfflinePipeline(config, log=lambda _: None).build(1, round_dir / "verified")
    pair = pd.read_parquet(dataset / "data.parquet").iloc[0]
    assert pair["chosen"] == right and pair["rejected"] == "38 + 54 = 93. " and tokenizer.decode(pair["rejected_token_ids"]) == pair["rejected"]
