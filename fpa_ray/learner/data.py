"""Offline dataset rows -> training examples, with explicit, counted rules for bad rows.

Rows follow TRL's conventions with token ids alongside: paired rows have `prompt_token_ids`,
`chosen_token_ids`, `rejected_token_ids` (or text `prompt`, `chosen`, `rejected`, tokenised with
the policy's tokenizer); labelled rows have `prompt_token_ids`, `completion_token_ids` (or text
`prompt`, `completion`) and a boolean `label`. Precomputed reference log-probs, when present,
are `ref_chosen_logp`/`ref_rejected_logp` or `ref_logp`.

Rules, each counted: a pair whose chosen equals its rejected is dropped (`identical_pair`); an
empty response is dropped (`empty_response`); a prompt that leaves no room for a response is
dropped (`prompt_too_long`); a response that does not fit in `max_length` is cut to fit
(`truncated`). A row missing a required column is an error that names the row and column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fpa_ray.learner.forward import TokenizedBatch

Kind = Literal["paired", "labelled"]
RESPONSE_COLUMNS = {"paired": ("chosen", "rejected"), "labelled": ("completion",)}
REF_COLUMNS = {"paired": ("ref_chosen_logp", "ref_rejected_logp"), "labelled": ("ref_logp",)}


class DatasetRowError(ValueError):
    """A row that lacks what the learner needs; the message names the row and the column."""


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]
    responses: tuple[tuple[int, ...], ...]  # (chosen, rejected) or (completion,)
    label: bool | None = None
    ref_logp: tuple[float, ...] | None = None
    truncated: bool = False

    def sort_key(self) -> tuple:
        return (self.prompt, self.responses, self.label is True)

    @property
    def num_tokens(self) -> int:
        """Prompt + response tokens of every side: what the example adds to a packed micro-batch."""
        return sum(len(self.prompt) + len(r) for r in self.responses)


@dataclass
class PreparedData:
    examples: list[Example]
    counts: Counter = field(default_factory=Counter)  # rule -> rows affected


def _token_ids(row: dict[str, Any], name: str, where: str, tokenizer, eos: bool) -> tuple[int, ...]:
    ids = row.get(f"{name}_token_ids")
    if ids is not None:
        return tuple(int(t) for t in ids)
    if row.get(name) is None:
        raise DatasetRowError(f"{where}: needs column '{name}_token_ids' or '{name}'")
    if tokenizer is None:
        raise DatasetRowError(f"{where}: column '{name}' is text but no tokenizer was given")
    ids = tokenizer(row[name], add_special_tokens=False)["input_ids"]
    # As TRL: EOS only where the text does not already end in it; a second one would train
    # log pi(EOS | ..., EOS), a token the policy never reaches at inference.
    if eos and ids and ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return tuple(ids)


def prepare_row(row: dict[str, Any], index: int, kind: Kind, max_length: int, tokenizer=None) -> Example | str:
    """The training example of one row, or the name of the rule that drops it."""
    where = f"row {index}"
    prompt = _token_ids(row, "prompt", where, tokenizer, eos=False)
    responses = tuple(_token_ids(row, name, where, tokenizer, eos=True) for name in RESPONSE_COLUMNS[kind])
    label = None
    if kind == "labelled":
        if not isinstance(row.get("label"), (bool, int)) or row["label"] not in (0, 1, True, False):
            raise DatasetRowError(f"{where}: column 'label' must be a boolean, got {row.get('label')!r}")
        label = bool(row["label"])
    if any(len(r) == 0 for r in responses):
        return "empty_response"
    if kind == "paired" and responses[0] == responses[1]:
        return "identical_pair"
    room = max_length - len(prompt)
    if room < 1:
        return "prompt_too_long"
    ref = tuple(row.get(c) for c in REF_COLUMNS[kind])
    ref = tuple(float(v) for v in ref) if all(v is not None for v in ref) else None
    truncated = any(len(r) > room for r in responses)
    if truncated:
        responses = tuple(r[:room] for r in responses)
        ref = None  # computed on the uncut response
        if kind == "paired" and responses[0] == responses[1]:
            return "identical_pair"
    return Example(prompt, responses, label, ref, truncated)


def prepare_examples(rows: Iterable[dict[str, Any]], kind: Kind, max_length: int, tokenizer=None) -> PreparedData:
    """Apply the rules to every row; the examples come back in a canonical (content) order."""
    prepared = PreparedData([])
    for index, row in enumerate(rows):
        result = prepare_row(row, index, kind, max_length, tokenizer)
        if isinstance(result, str):
            prepared.counts[result] += 1
            continue
        prepared.counts["truncated"] += result.truncated
        prepared.examples.append(result)
    # Workers may receive rows in any order: sort by content so every worker sees the same list.
    prepared.examples.sort(key=Example.sort_key)
    prepared.counts["kept"] = len(prepared.examples)
    return prepared


def collate(
    examples: list[Example], kind: Kind, pad_id: int, device: torch.device | str = "cpu", packed: bool = False
) -> tuple[TokenizedBatch, torch.Tensor | None]:
    """The micro-batch's sequences (paired: all chosen, then all rejected) and precomputed reference
    sums, on `device`: one right-padded row each, or with `packed` several per row, no wider than the
    longest sequence (`pack_rows`), positions restarting at 0 with each."""
    sequences = [(e.prompt, e.responses[side]) for side in range(len(RESPONSE_COLUMNS[kind])) for e in examples]
    lengths = [len(p) + len(r) for p, r in sequences]
    width = max(lengths)
    layout = pack_rows(lengths, width) if packed else [[i] for i in range(len(sequences))]
    shape = (len(layout), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long, device="cpu")
    attention = torch.zeros(shape, dtype=torch.long, device="cpu")
    response_mask = torch.zeros(shape, dtype=torch.bool, device="cpu")
    positions = torch.zeros(shape, dtype=torch.long, device="cpu") if packed else None
    sequence_ids = torch.full(shape, -1, dtype=torch.long, device="cpu") if packed else None
    for row, members in enumerate(layout):
        start = 0
        for i in members:
            prompt, response = sequences[i]
            end = start + lengths[i]
            input_ids[row, start:end] = torch.tensor(prompt + response, device="cpu")
            attention[row, start:end] = 1
            response_mask[row, start + len(prompt) : end] = True
            if packed:
                positions[row, start:end] = torch.arange(lengths[i], device="cpu")
                sequence_ids[row, start:end] = i
            start = end
        if packed:  # the tail's padding as a sequence of its own: no real token attends to it
            positions[row, start:] = torch.arange(width - start, device="cpu")
    correct = torch.tensor([bool(e.label) for e in examples], device="cpu") if kind == "labelled" else None
    ref = None
    if all(e.ref_logp is not None for e in examples):
        ref = torch.tensor([e.ref_logp[side] for side in range(len(RESPONSE_COLUMNS[kind])) for e in examples], dtype=torch.float32, device="cpu")
    # Built on the host (row by row), then moved in one copy per tensor.
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return TokenizedBatch(move(input_ids), move(attention), move(response_mask), move(correct), move(positions), move(sequence_ids)), move(ref)


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequence indices per row, first-fit by decreasing length into rows of `width` tokens. Rows no wider
    than the longest sequence keep SDPA's block-diagonal attention (a row's width squared) at most what
    the padded batch costs, while the padding the LM head and MLPs ran on is gone; one row of everything
    would cost the micro-batch's total length squared."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


@dataclass(frozen=True)
class MicroBatching:
    """How a worker cuts its share of a global batch into forward passes: at most `size` units (pairs or
    samples) each and, with a token budget, at most `tokens` prompt + response tokens (a unit longer than
    the budget alone); `packed`: each micro-batch is one padding-free row (`collate`)."""

    size: int
    tokens: int | None = None
    packed: bool = False

    @classmethod
    def of(cls, learner) -> MicroBatching:
        return cls(learner.micro_batch_size, learner.micro_batch_tokens, learner.padding_free)

    def plan(self, units: list[int], tokens: list[int]) -> list[list[int]]:
        """Consecutive groups of `units` (`tokens[i]`: unit i's token count) within both limits."""
        groups, used = [], 0
        for unit, count in zip(units, tokens):
            full = groups and (len(groups[-1]) == self.size or (self.tokens is not None and used + count > self.tokens))
            if not groups or full:
                groups.append([])
                used = 0
            groups[-1].append(unit)
            used += count
        return groups


def split_to(groups: list[list[int]], tokens: dict[int, int], count: int) -> list[list[int]]:
    """`groups` cut into `count` groups: the one with the most tokens (of those with two units or more)
    halved by tokens, until there are `count`. Every worker of a ZeRO-2/3 step must run the same number of
    micro-batches, since each backward pass holds collectives; halving never breaks either limit."""
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [g for g in groups if len(g) > 1]
        if not splittable:
            raise ValueError(f"cannot cut {sum(map(len, groups))} units into {count} micro-batches")
        group = max(splittable, key=lambda g: sum(tokens[u] for u in g))
        total, run, cut = sum(tokens[u] for u in group), 0, 1
        for cut in range(1, len(group)):
            run += tokens[group[cut - 1]]
            if run >= total / 2:
                break
        index = groups.index(group)
        groups[index : index + 1] = [group[:cut], group[cut:]]
    return groups


def mismatched_examples(examples: list[Example], max_length: int) -> list[Example]:
    """KTO's KL rows over a whole global batch: prompt k followed by the response of row k + 1 (mod N).

    Built over the global batch, not per micro-batch: with one row per micro-batch the "mismatched"
    pair would be the sample itself. Responses are cut to fit `max_length`.
    """
    if len(examples) < 2:
        raise ValueError("KTO's KL estimate pairs each prompt with another row's response: it needs at least 2 rows per global batch")
    rows = []
    for k, example in enumerate(examples):
        response = examples[(k + 1) % len(examples)].responses[0]
        rows.append(Example(example.prompt, (response[: max_length - len(example.prompt)],), label=example.label))
    return rows


def global_order(num_examples: int, step: int, batch: int, seed: int) -> list[int]:
    """Example indices of global batch `step` (per-epoch seeded permutation, remainder dropped)."""
    per_epoch = num_examples // batch
    epoch, offset = divmod(step, per_epoch)
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return permutation[offset * batch : (offset + 1) * batch].tolist()
