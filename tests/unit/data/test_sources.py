"""Each benchmark schema, read from local files written in its real column layout."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fpa_ray.config import PromptSourceConfig
from fpa_ray.data.sources import InvalidRowError, load_prompts

# One row per schema, in the columns the Hub dataset uses, and the row we expect.
ROWS = {
    "math": (
        {"problem": "What is $1+1$?", "solution": "We add: $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
        ("math-0", "What is $1+1$?", "2"),
    ),
    "math500": (
        {"problem": "Find $x$.", "solution": "...", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"},
        ("math500-test/algebra/1.json", "Find $x$.", "\\frac{1}{2}"),
    ),
    "gsm8k": (
        {"question": "Tom has 3 apples...", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,234"},
        ("gsm8k-0", "Tom has 3 apples...", "1234"),
    ),
    "aime24": (
        {"id": 60, "problem": "Find the remainder.", "solution": "...", "answer": "204", "url": "https://...", "year": "2024"},
        ("aime24-60", "Find the remainder.", "204"),
    ),
    "amc23": ({"id": 3, "question": "How many?", "answer": 27.0, "url": "https://..."}, ("amc23-3", "How many?", "27")),
    "minerva_math": ({"question": "Compute the mass.", "answer": "4.5e33"}, ("minerva_math-0", "Compute the mass.", "4.5e33")),
    "olympiadbench": (
        {"id": 1606, "question": "Find all n.", "final_answer": ["$3$", "$5$"], "is_multiple_answer": True, "unit": None},
        ("olympiadbench-1606", "Find all n.", "3, 5"),
    ),
    "math_perturb": (
        {"problem_id": "a1b2", "problem": "Evaluate $\\log_4 64$.", "answer": "3", "level": "Level 5", "type": "Algebra", "original_split": "test"},
        ("math_perturb-a1b2", "Evaluate $\\log_4 64$.", "3"),
    ),
}


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_schema_is_normalised(tmp_path, name, suffix):
    raw, (row_id, prompt, answer) = ROWS[name]
    path = _write(tmp_path / f"{name}{suffix}", [raw])
    result = load_prompts(PromptSourceConfig(name=name, path=path))
    assert [(r.id, r.prompt, r.answer, r.source) for r in result.rows] == [(row_id, prompt, answer, name)]
    assert result.skipped == []


def test_malformed_rows_name_file_row_and_field(tmp_path):
    good = {"question": "q", "answer": "x\n#### 5"}
    rows = [good, {"question": "", "answer": "#### 1"}, {"question": "q2"}, {"question": ["not", "text"], "answer": "#### 2"}, {"question": "q3", "answer": "no hashes"}]
    path = tmp_path / "gsm8k.jsonl"
    _write(path, rows)
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(InvalidRowError, match=rf"{path} line 2: field 'question': empty"):
        load_prompts(PromptSourceConfig(name="gsm8k", path=str(path)))
    result = load_prompts(PromptSourceConfig(name="gsm8k", path=str(path), skip_invalid=True))
    assert [r.prompt for r in result.rows] == ["q"]
    assert result.skipped == [
        f"{path} line 2: field 'question': empty",
        f"{path} line 3: field 'answer': missing",
        f"{path} line 4: field 'question': expected text, got list",
        f"{path} line 5: field 'answer': no '#### <answer>' line",
        f"{path} line 6: field '(json)': not valid JSON (Expecting property name enclosed in double quotes)",
    ]


def test_other_malformed_cases(tmp_path):
    math = _write(tmp_path / "math.parquet", [{"problem": "p", "solution": "no box here"}])
    with pytest.raises(InvalidRowError, match=r"math.parquet row 0: field 'solution': no .boxed"):
        load_prompts(PromptSourceConfig(name="math", path=math))
    dup = _write(tmp_path / "aime.jsonl", [{"id": 1, "problem": "a", "answer": "1"}, {"id": 1, "problem": "b", "answer": "2"}])
    with pytest.raises(InvalidRowError, match=r"line 2: field 'id': duplicate id 'aime24-1'"):
        load_prompts(PromptSourceConfig(name="aime24", path=dup))
    olympiad = _write(tmp_path / "ob.jsonl", [{"id": 1, "question": "q", "final_answer": []}])
    with pytest.raises(InvalidRowError, match=r"field 'final_answer': expected a non-empty list"):
        load_prompts(PromptSourceConfig(name="olympiadbench", path=olympiad))


def test_limit_sources_and_paths(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    path = _write(tmp_path / "gsm8k.jsonl", rows)
    assert [r.answer for r in load_prompts(PromptSourceConfig(name="gsm8k", path=path, limit=3)).rows] == ["0", "1", "2"]
    with pytest.raises(ValueError, match=r"unknown prompt source 'gsm9k'"):
        load_prompts(PromptSourceConfig(name="gsm9k"))
    with pytest.raises(ValueError, match=r"not on the Hub: pass path="):
        load_prompts(PromptSourceConfig(name="math_perturb"))
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl does not exist"):
        load_prompts(PromptSourceConfig(name="gsm8k", path=str(tmp_path / "missing.jsonl")))


def test_synthetic_source_follows_the_task():
    rows = load_prompts(PromptSourceConfig(name="synthetic", split="test", limit=20), seed=5).rows
    assert len(rows) == 20 and all(r.source == "synthetic" and r.id.startswith("synthetic-") for r in rows)
    assert rows == load_prompts(PromptSourceConfig(name="synthetic", split="test", limit=20), seed=5).rows


def test_minerva_math_in_the_qwen_toolkit_layout(tmp_path):
    """evaluation/data/minerva_math/test.jsonl of Qwen2.5-Math's toolkit: `problem` and a boxed `solution`."""
    rows = [
        {"problem": "Compute the mass.", "solution": "So $M = \\boxed{4.5e33}$ grams.", "type": "Astronomy", "idx": 0},
        {"problem": "Find the period.", "solution": "The period is $\\boxed{2\\pi}$.", "type": "Physics", "idx": 1},
    ]
    path = _write(tmp_path / "test.jsonl", rows)
    result = load_prompts(PromptSourceConfig(name="minerva_math", path=path))
    assert [(r.id, r.prompt, r.answer) for r in result.rows] == [
        ("minerva_math-0", "Compute the mass.", "4.5e33"), ("minerva_math-1", "Find the period.", "2\\pi"),
    ]
    hub = _write(tmp_path / "hub.jsonl", [ROWS["minerva_math"][0]])  # the Hub's layout still loads
    assert load_prompts(PromptSourceConfig(name="minerva_math", path=hub)).rows[0].answer == "4.5e33"
    for bad, message in (
        ({"prompt": "neither layout"}, "line 1: field 'question': missing (and no 'problem' of the Qwen2.5-Math toolkit's layout either)"),
        ({"problem": "toolkit layout", "solution": "no box here"}, "line 1: field 'solution': no \\\\boxed"),
    ):
        path = _write(tmp_path / "bad.jsonl", [bad])
        with pytest.raises(InvalidRowError, match=message.replace("(", "\\(").replace(")", "\\)")) as error:
            load_prompts(PromptSourceConfig(name="minerva_math", path=path))
        assert "bad.jsonl" in str(error.value)
