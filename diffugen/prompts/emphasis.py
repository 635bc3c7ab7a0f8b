"""Prompt emphasis: ``word++`` / ``word--`` (each ``+`` multiplies the word's weight by 1.1, each
``-`` by 0.9, as in compel and the original DiffuGen configs), ``(some words)++`` and the A1111 form
``(some words:1.4)``. :func:`parse_emphasis` returns the clean text and its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EMPHASIS = re.compile(
    r"\((?P<pw>[^()]*?):\s*(?P<w>\d+(?:\.\d+)?)\)"  # (words:1.4)
    r"|\((?P<pp>[^()]*)\)(?P<ps>\++|-+)"  # (words)++
    r"|(?P<word>[^\s(),.;:!?+-]+(?:-[^\s(),.;:!?+-]+)*)(?P<ws>\++|-+)(?=[\s,.;:!?)]|$)"  # word++
)


@dataclass(frozen=True)
class Chunk:
    text: str
    weight: float = 1.0


def parse_emphasis(prompt: str) -> list[Chunk]:
    """Split a prompt into chunks of plain text with a weight each.

    >>> [(c.text, round(c.weight, 3)) for c in parse_emphasis("a car++ on a road")]
    [('a ', 1.0), ('car', 1.21), (' on a road', 1.0)]
    """
    chunks: list[Chunk] = []
    pos = 0
    for m in _EMPHASIS.finditer(prompt):
        if m.start() > pos:
            chunks.append(Chunk(prompt[pos : m.start()]))
        if m.group("pw") is not None:
            chunks.append(Chunk(m.group("pw"), float(m.group("w"))))
        else:
            text, suffix = (m.group("pp"), m.group("ps")) if m.group("pp") is not None else (m.group("word"), m.group("ws"))
            weight = 1.1 ** len(suffix) if suffix[0] == "+" else 0.9 ** len(suffix)
            chunks.append(Chunk(text, weight))
        pos = m.end()
    if pos < len(prompt):
        chunks.append(Chunk(prompt[pos:]))
    return [c for c in chunks if c.text]


def clean_prompt(prompt: str) -> str:
    """The prompt without emphasis markers: what the text encoder reads."""
    return "".join(c.text for c in parse_emphasis(prompt))
