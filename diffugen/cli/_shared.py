"""Helpers the command modules share."""

from __future__ import annotations


def load_dataset(name: str):
    """The FiftyOne dataset ``name`` (a clear error listing the datasets when there is none)."""
    from ..store.dataset import load

    return load(name)
