"""Final-answer extraction from model output, in one linear scan with no evaluation of the text."""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_SPACE_FORM = re.compile(r"\s+([^\s$]+)")  # `\boxed 5`: the token after the space


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
