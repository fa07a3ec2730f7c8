"""Prompt sources: one registry that yields {id, prompt, answer, source} rows.

A source is the synthetic task or a benchmark schema (MATH, MATH500, GSM8K, AIME 2024, AMC 2023,
Minerva Math, OlympiadBench, MATH-Perturb). A schema is read from the Hugging Face Hub by name or
from a local .jsonl/.parquet file with the same columns. A malformed row raises an error naming
the file, the row and the field, or, with `skip_invalid`, is skipped and counted in
`PromptSet.skipped`, so that nothing disappears silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpa_ray.config import PromptSourceConfig, SyntheticTaskConfig
from fpa_ray.data.schemas import SCHEMAS, SOURCE_NAMES, FieldError, SourceSchema, text_field
from fpa_ray.data.synthetic import generate


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    answer: str
    source: str


class InvalidRowError(ValueError):
    """A row that cannot be normalised; the message names where and which field."""


@dataclass
class PromptSet:
    rows: list[PromptRow]
    skipped: list[str] = field(default_factory=list)  # one message per skipped row


def _read_local(path: Path) -> Iterator[tuple[str, dict[str, Any] | FieldError]]:
    """(location, row or the reason it could not be read) for each row of a local file."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield f"{path} line {number}", FieldError("(json)", f"not valid JSON ({error.msg})")
                    continue
                yield f"{path} line {number}", row if isinstance(row, dict) else FieldError("(row)", "not a JSON object")
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
            raise FieldError(prompt_field, f"missing (and no {layout.prompt_field!r} of {layout.description} layout either)")
    prompt = text_field(row, prompt_field)
    answer = answer_of(row)
    row_id = text_field(row, id_field) if id_field else str(index)
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
            if isinstance(row, FieldError):
                raise row
            prompt_row = _normalise(schema, row, index)
            if prompt_row.id in seen:
                raise FieldError(schema.id_field or "(index)", f"duplicate id {prompt_row.id!r}")
        except FieldError as error:
            message = f"{location}: {error}"
            if not source.skip_invalid:
                raise InvalidRowError(f"{message} (set skip_invalid to skip and count such rows)") from None
            result.skipped.append(message)
            continue
        seen.add(prompt_row.id)
        result.rows.append(prompt_row)
    return result
