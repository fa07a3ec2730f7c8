"""Prompt sources: one registry that yields {id, prompt, answer, source} rows.

A source is the synthetic task or a benchmark schema (MATH, MATH500, GSM8K, AIME 2024, AMC 2023,
Minerva Math, OlympiadBench, MATH-Perturb). A schema is read from the Hugging Face Hub by name or
from a local .jsonl/.parquet file with the same columns. A malformed row raises an error naming
the file, the row and the field, or, with `skip_invalid`, is skipped and counted in
`PromptSet.skipped`, so that nothing disappears silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpa_ray.config import PromptSourceConfig, SyntheticTaskConfig
from fpa_ray.data.synthetic import generate
from fpa_ray.verifier.extract import last_boxed


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    answer: str
    source: str


class InvalidRowError(ValueError):
    """A row that cannot be normalised; the message names where and which field."""


class _FieldError(Exception):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"field {field_name!r}: {reason}")
        self.field, self.reason = field_name, reason


def _text(row: dict[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise _FieldError(name, "missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _FieldError(name, f"expected text, got {type(value).__name__}")
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value  # AMC answers arrive as 27.0
    value = str(value).strip()
    if not value:
        raise _FieldError(name, "empty")
    return value


def _boxed_in(name: str) -> Callable[[dict[str, Any]], str]:
    def answer(row: dict[str, Any]) -> str:
        boxed = last_boxed(_text(row, name))
        if not boxed or not boxed.strip():
            raise _FieldError(name, "no \\boxed{...} answer in the solution")
        return boxed.strip()

    return answer


def _after_hashes(row: dict[str, Any]) -> str:
    """GSM8K: the number after '####', thousands separators removed."""
    text = _text(row, "answer")
    if "####" not in text:
        raise _FieldError("answer", "no '#### <answer>' line")
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise _FieldError("answer", "empty after '####'")
    return final


def _first_of_list(name: str) -> Callable[[dict[str, Any]], str]:
    """OlympiadBench: `final_answer` is a list of LaTeX strings, often wrapped in $...$."""

    def answer(row: dict[str, Any]) -> str:
        values = row.get(name)
        if values is None:
            raise _FieldError(name, "missing")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise _FieldError(name, "expected a non-empty list of non-empty strings")
        return ", ".join(v.strip().strip("$").strip() for v in values)

    return answer


def _plain(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: _text(row, name)


@dataclass(frozen=True)
class Layout:
    """Another column layout of the same benchmark, recognised by its prompt field."""

    description: str
    prompt_field: str
    answer: Callable[[dict[str, Any]], str]
    id_field: str | None


@dataclass(frozen=True)
class SourceSchema:
    name: str
    prompt_field: str
    answer: Callable[[dict[str, Any]], str]
    id_field: str | None  # None: the row index is the id
    hub_path: str | None  # None: distributed outside the Hub, pass a local path
    hub_config: str | None = None
    default_split: str = "test"
    notes: str = ""
    alternate: Layout | None = None  # used for a row that lacks prompt_field and has the alternate's


SCHEMAS: dict[str, SourceSchema] = {
    schema.name: schema
    for schema in (
        SourceSchema("math", "problem", _boxed_in("solution"), None, "DigitalLearningGmbH/MATH-lighteval", default_split="test"),
        SourceSchema("math500", "problem", _plain("answer"), "unique_id", "HuggingFaceH4/MATH-500"),
        SourceSchema("gsm8k", "question", _after_hashes, None, "openai/gsm8k", hub_config="main"),
        SourceSchema("aime24", "problem", _plain("answer"), "id", "HuggingFaceH4/aime_2024", default_split="train"),
        SourceSchema("amc23", "question", _plain("answer"), "id", "math-ai/amc23"),
        SourceSchema(
            "minerva_math", "question", _plain("answer"), None, "math-ai/minervamath",
            # Qwen2.5-Math's evaluation toolkit (evaluation/data/minerva_math/test.jsonl): problem and a boxed solution
            alternate=Layout("the Qwen2.5-Math toolkit's", "problem", _boxed_in("solution"), None),
        ),
        SourceSchema(
            "olympiadbench", "question", _first_of_list("final_answer"), "id", "Hothan/OlympiadBench",
            hub_config="OE_TO_maths_en_COMP", default_split="train",
        ),
        SourceSchema(
            "math_perturb", "problem", _plain("answer"), "problem_id", None,
            notes="MATH-P-Simple / MATH-P-Hard jsonl files from github.com/Kaffaljidhmah2/MATH-Perturb",
        ),
    )
}
SOURCE_NAMES = ("synthetic", *SCHEMAS)


@dataclass
class PromptSet:
    rows: list[PromptRow]
    skipped: list[str] = field(default_factory=list)  # one message per skipped row


def _read_local(path: Path) -> Iterator[tuple[str, dict[str, Any] | _FieldError]]:
    """(location, row or the reason it could not be read) for each row of a local file."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield f"{path} line {number}", _FieldError("(json)", f"not valid JSON ({error.msg})")
                    continue
                yield f"{path} line {number}", row if isinstance(row, dict) else _FieldError("(row)", "not a JSON object")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {index}", row
    else:
        raise ValueError(f"{path}: unsupported file type (use .jsonl or .parquet)")


def _read_hub(dataset_id: str, config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    data = datasets.load_dataset(dataset_id, config, split=split)
    for index, row in enumerate(data):
        yield f"{dataset_id}[{split}] row {index}", row


def _normalise(schema: SourceSchema, row: dict[str, Any], index: int) -> PromptRow:
    layout = schema.alternate
    if layout is not None and schema.prompt_field not in row and layout.prompt_field in row:
        prompt_field, answer_of, id_field = layout.prompt_field, layout.answer, layout.id_field
    else:
        prompt_field, answer_of, id_field = schema.prompt_field, schema.answer, schema.id_field
        if layout is not None and prompt_field not in row:
            raise _FieldError(prompt_field, f"missing (and no {layout.prompt_field!r} of {layout.description} layout either)")
    prompt = _text(row, prompt_field)
    answer = answer_of(row)
    row_id = _text(row, id_field) if id_field else str(index)
    return PromptRow(id=f"{schema.name}-{row_id}", prompt=prompt, answer=answer, source=schema.name)


def load_prompts(source: PromptSourceConfig, synthetic: SyntheticTaskConfig | None = None, seed: int = 0) -> PromptSet:
    """Normalised rows of `source`, in file order, up to `limit`."""
    if source.name == "synthetic":
        split = source.split or "train"
        problems = generate(synthetic or SyntheticTaskConfig(), split, source.limit or 500, seed=seed)
        return PromptSet([PromptRow(p.id, p.prompt, p.answer, "synthetic") for p in problems])
    if source.name not in SCHEMAS:
        raise ValueError(f"unknown prompt source {source.name!r}; known: {', '.join(SOURCE_NAMES)}")
    schema = SCHEMAS[source.name]
    split = source.split or schema.default_split
    local = Path(source.path) if source.path and Path(source.path).suffix in (".jsonl", ".parquet") else None
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"prompt source {source.name!r}: {local} does not exist")
        rows = _read_local(local)
    else:
        dataset_id = source.path or schema.hub_path
        if dataset_id is None:
            raise ValueError(f"prompt source {source.name!r} is not on the Hub: pass path= to a local file ({schema.notes})")
        rows = _read_hub(dataset_id, schema.hub_config, split)
    result = PromptSet([])
    seen: set[str] = set()
    for index, (location, row) in enumerate(rows):
        if source.limit is not None and len(result.rows) >= source.limit:
            break
        try:
            if isinstance(row, _FieldError):
                raise row
            prompt_row = _normalise(schema, row, index)
            if prompt_row.id in seen:
                raise _FieldError(schema.id_field or "(index)", f"duplicate id {prompt_row.id!r}")
        except _FieldError as error:
            message = f"{location}: {error}"
            if not source.skip_invalid:
                raise InvalidRowError(f"{message} (set skip_invalid to skip and count such rows)") from None
            result.skipped.append(message)
            continue
        seen.add(prompt_row.id)
        result.rows.append(prompt_row)
    return result
