"""Helpers the command modules share."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..common import device_problem


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, ``PROG: error: MESSAGE``, exit status 2.

    argparse prints the whole usage first; the message already names the argument and the value, and
    ``--help`` shows the usage. Subparsers made by ``add_subparsers`` are of the same class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


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
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
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
