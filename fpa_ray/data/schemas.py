"""The benchmark schemas prompt sources are read with: for each named source its Hub dataset, its
prompt, answer and id columns, and how an answer is read from a row. Apart from the loading code
(sources.py), so that the config can check a source's name without importing what loads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fpa_ray.verifier.extract import last_boxed


class FieldError(Exception):
    """A row's field that cannot be read; the loader adds where the row is."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"field {field_name!r}: {reason}")
        self.field, self.reason = field_name, reason


def text_field(row: dict[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise FieldError(name, "missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FieldError(name, f"expected text, got {type(value).__name__}")
    if isinstance(value, float):
        value = int(value) if value.is_integer() else value  # AMC answers arrive as 27.0
    value = str(value).strip()
    if not value:
        raise FieldError(name, "empty")
    return value


def _boxed_in(name: str) -> Callable[[dict[str, Any]], str]:
    def answer(row: dict[str, Any]) -> str:
        boxed = last_boxed(text_field(row, name))
        if not boxed or not boxed.strip():
            raise FieldError(name, "no \\boxed{...} answer in the solution")
        return boxed.strip()

    return answer


def _after_hashes(row: dict[str, Any]) -> str:
    """GSM8K: the number after '####', thousands separators removed."""
    text = text_field(row, "answer")
    if "####" not in text:
        raise FieldError("answer", "no '#### <answer>' line")
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise FieldError("answer", "empty after '####'")
    return final


def _first_of_list(name: str) -> Callable[[dict[str, Any]], str]:
    """OlympiadBench: `final_answer` is a list of LaTeX strings, often wrapped in $...$."""

    def answer(row: dict[str, Any]) -> str:
        values = row.get(name)
        if values is None:
            raise FieldError(name, "missing")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise FieldError(name, "expected a non-empty list of non-empty strings")
        return ", ".join(v.strip().strip("$").strip() for v in values)

    return answer


def _plain(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: text_field(row, name)


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
