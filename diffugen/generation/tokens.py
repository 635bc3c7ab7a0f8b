"""A tokenized prompt and how a word's token positions are found in it (every model family)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenized prompt: ``ids`` (77 ints with start/end/padding) and per-token emphasis ``weights``."""

    ids: list[int]
    weights: list[float]
    truncated: bool


def find_word_tokens(ids: Sequence[int], word_ids: Sequence[int]) -> list[int]:
    """Positions in ``ids`` of every occurrence of the token sequence ``word_ids`` (daam's merge rule)."""
    n = len(word_ids)
    if n == 0:
        return []
    found: list[int] = []
    for start in range(len(ids) - n + 1):
        if list(ids[start : start + n]) == list(word_ids):
            found.extend(range(start, start + n))
    return found
