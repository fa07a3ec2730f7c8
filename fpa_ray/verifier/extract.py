"""Final-answer extraction from model output: linear scans and anchored regexes, never evaluation.

Order: the boxed answer (\\boxed{...} / \\fbox{...} with balanced braces, or `\\boxed 5`), with
the boxes just before it when only separators stand between them (`\\boxed{1}, \\boxed{2} and
\\boxed{3}` is the answer `1, 2, 3`, as math-verify reads it); else GSM8K's `#### x`; else the
last "The answer is x" or "Final Answer: ... is x"; else the last math span ($...$, $$...$$,
\\(...\\), \\[...\\]) or plain number, whichever comes later (a response without math that is
one short line with a number in it is taken whole); never a guess where a box is broken. Minerva's
"Final Answer: The final answer is x. I hope it is correct." comes first of all, as in
math-verify. The extracted string is kept with every verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXTRACTION_VERSION = 2  # recorded with every grader's version: a change here changes verdicts
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_MAX_BOXES = 8  # answers listed box by box; more is not one answer
_SPACE_FORM = re.compile(r"\s+([^\s$]+)")  # `\boxed 5`: the token after the space
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER_STOP = re.compile(r"(?<=\d)\.$")  # `\boxed{12.}`: a sentence's full stop, not a decimal point
# The lead-in only, so no answer is swallowed; "Final Answer: The volume of $V$ is 120" as math-verify reads it.
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*|[Ff]inal [Aa]nswer:?[^\n.]{0,100}?\bis[:\s]+")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
# What may stand between two boxes of one answer: spaces, math delimiters, commas, `and`/`or` (also
# closing a short \text{ for part (a) and }), \quad, and the next one's label (`x_1 = \boxed{3}, x_2 = \boxed{5}`).
_BOX_SEPARATOR = re.compile(
    r"(?:\s|\$|\\[()\[\]]|[,;.]|\\q?quad|\\text\{[^{}]{0,30}?\b(?:and|or)\s*\}|\\text\{\s*,\s*\}|\\[,; ]|\band\b|\bor\b|[A-Za-z](?:_\{?\w+\}?)?\s*=)*"
)
# Minerva's format, "Final Answer: The final answer is $x$. I hope it is correct.": it outranks a box, as in math-verify.
_MINERVA = re.compile(r"[Ff]inal [Aa]nswer is:?\s*([^\n]{1,200}?)\.?\s?I hope")
# Display math may span lines; inline math ($...$ with \$ escapes, \(...\)) may not.
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\(([^\n]+?)\\\)|(?<!\\)\$((?:[^$\n\\]|\\.)+?)\$", re.DOTALL)
_BARE = re.compile(r"[^\n]{0,64}\d[^\n]{0,64}")  # a response that is only an answer: one short line with a number
# A plain number, fraction or percentage in running text (digits only: nothing to evaluate).
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?%?(?![\w/])")
_MATH_TAIL = 2000  # math spans are looked for in the response's end only: lazy matches stay linear-bounded


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    method: str | None  # "boxed", "hashes", "answer_is", "math", "bare", "number", or None when nothing was found


def _box_at(text: str, start: int) -> tuple[str, int] | None:
    """(content, end) of the box command at `start`; None when its braces never close."""
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = start + len(command)
    if rest < len(text) and text[rest] != "{":
        match = _SPACE_FORM.match(text, rest)
        return (match.group(1), match.end()) if match else None
    depth = 0
    for index in range(rest, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[rest + 1 : index], index + 1
    return None  # unbalanced braces


def _previous_box(text: str, before: int) -> int:
    return max(text.rfind(command, 0, before) for command in _BOX_COMMANDS)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (balanced braces), or of `\\boxed 5`; None if absent."""
    start = _previous_box(text, len(text))
    if start < 0:
        return None
    box = _box_at(text, start)
    return box[0] if box else None


def boxed_answers(text: str) -> list[str]:
    """The last box's content, preceded by the boxes of the same answer (only separators between)."""
    start = _previous_box(text, len(text))
    box = _box_at(text, start) if start >= 0 else None
    if box is None:
        return []
    answers = [box[0]]
    while len(answers) < _MAX_BOXES:
        previous = _previous_box(text, start)
        if previous < 0:
            break
        # Brace matching stops where the later box begins: each step is bounded by the gap it scans.
        box = _box_at(text[:start], previous)
        if box is None or not _BOX_SEPARATOR.fullmatch(text, box[1], start):
            break
        answers.insert(0, box[0])
        start = previous
    return answers


_QUOTES = re.compile(r'^\\?"|\\?"$')  # "Final answer is \"$12$ and $13$\"": quotes, escaped or not


def _clean_tail(answer: str) -> str:
    return _QUOTES.sub("", answer.strip().rstrip(".").strip()).strip().strip("$").strip()


def _clean_box(answer: str) -> str:
    return _NUMBER_STOP.sub("", answer.strip())


def extract_answer(text: str | bytes) -> Extraction:
    """The final answer of a response; bytes are decoded as UTF-8 with invalid bytes replaced."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    minerva = _MINERVA.findall(text)
    if minerva and _clean_tail(minerva[-1]):
        return Extraction(_clean_tail(minerva[-1]), "answer_is")
    boxes = [_clean_box(answer) for answer in boxed_answers(text)]
    if boxes and boxes[-1]:  # an empty box among earlier ones adds nothing
        return Extraction(", ".join(box for box in boxes if box), "boxed")
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
    if any(command in text for command in _BOX_COMMANDS):
        return Extraction(None, None)  # a broken or empty box is a format failure, not an answer to guess
    tail = text[-_MATH_TAIL:]
    if len(text) > _MATH_TAIL:  # start at a line break, so that inline $ pairs are not shifted by the cut
        tail = tail[tail.find("\n") + 1 :]
    # Last resorts, as math-verify reads unanchored text: the last math span or plain number, whichever ends later.
    spans = [match for match in _MATH_SPAN.finditer(tail) if (match.group(match.lastindex) or "").strip()]
    numbers = list(_NUMBER.finditer(tail))
    if spans and (not numbers or spans[-1].end() >= numbers[-1].end()):
        return Extraction(spans[-1].group(spans[-1].lastindex).strip(), "math")
    if not spans and _BARE.fullmatch(text.strip()):
        return Extraction(_clean_tail(text), "bare")
    if numbers:
        return Extraction(numbers[-1].group(0), "number")
    return Extraction(None, None)
