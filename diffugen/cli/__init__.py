"""The ``diffugen`` command line: one module per stage adds its commands (``add_parsers``)."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import quiet
from ..errors import DiffuGenError
from . import app, curation, generate, labels, textual_inversion, toyworld
from ._shared import OneLineParser

COMMAND_MODULES = (generate, labels, curation, app, textual_inversion, toyworld)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="diffugen", description="Labeled image datasets from Stable Diffusion, in FiftyOne.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, skips)")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet.configure(verbose=args.verbose)
    try:
        return args.func(args)
    except DiffuGenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: samples written so far are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
