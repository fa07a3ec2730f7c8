"""Final-answer extraction from model output: linear scans and anchored regexes, never evaluation.

Order: the last \\boxed{...} / \\fbox{...} (balanced braces) or `\\boxed 5`; else GSM8K's
`#### x`; else the last "The answer is x". The extracted string is kept with every verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_SPACE_FORM = re.compile(r"\s+([^\s$]+)")  # `\boxed 5`: the token after the space
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER_STOP = re.compile(r"(?<=\d)\.$")  # `\boxed{12.}`: a sentence's full stop, not a decimal point
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*")  # matches the lead-in only, so none is swallowed
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    method: str | None  # "boxed", "hashes", "answer_is", or None when nothing was found


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (balanced braces), or of `\\boxed 5`; None if absent."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = start + len(command)
    if rest < len(text) and text[rest] != "{":
        match = _SPACE_FORM.match(text, rest)
        return match.group(1) if match else None
    depth = 0
    for index in range(rest, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[rest + 1 : index]
    return None  # unbalanced braces


def _clean_tail(answer: str) -> str:
    return answer.strip().rstrip(".").strip().strip("$").strip()


def extract_answer(text: str | bytes) -> Extraction:
    """The final answer of a response; bytes are decoded as UTF-8 with invalid bytes replaced."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return Extraction(_NUMBER_STOP.sub("", boxed.strip()), "boxed")
    hashes = _HASHES.findall(text)
    if hashes and _clean_tail(hashes[-1]):
        return Extraction(_clean_tail(hashes[-1]), "hashes")
    lead_ins = list(_ANSWER_IS.finditer(text))
    if lead_ins:
        rest = text[lead_ins[-1].end() :]
        end = _SENTENCE_END.search(rest)
        answer = _clean_tail(rest[: end.start()] if end else rest)
        if answer:
            return Extraction(answer, "answer_is")
    return Extraction(None, None)
