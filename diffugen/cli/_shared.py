"""Helpers the command modules share."""

from __future__ import annotations

import argparse

from ..common import device_problem


def load_dataset(name: str):
    """The FiftyOne dataset ``name`` (a clear error listing the datasets when there is none)."""
    from ..store.dataset import load

    return load(name)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def device(text: str) -> str:
    """An argparse type: a device name (see :func:`diffugen.common.device_problem`)."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}; got {text!r}")
    return text
