"""Pair building, labelled rows, scoring and the ledger: pure functions on hand-made frames."""

import json

import pandas as pd
import pytest

from fpa_ray.accounting import Ledger
from fpa_ray.data.builder import build_pairs, build_unpaired, content_hash
from fpa_ray.evaluation import score, total_gain_loss


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
