"""A first run prints what a user needs and nothing else: settings for the libraries underneath.

Imported first by the package, so it runs before FiftyOne reads its config.
"""

from __future__ import annotations

import os


def configure_environment() -> None:
    """Environment defaults (a user's own settings win)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if "FIFTYONE_DATABASE_URI" not in os.environ:
        # The bundled mongod (fiftyone-db) is older than FiftyOne's oldest "supported" version and
        # FiftyOne warns about it on every connection; it works, and there is nothing to do about it.
        os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")


def configure(verbose: bool = False) -> None:
    """Library log levels for the command line: warnings that say nothing actionable are hidden."""
    if verbose:
        return
    import logging

    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - both are dependencies
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": ours shows the work that matters
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("fiftyone").setLevel(logging.WARNING)
    import warnings

    # diffusers' auto pipelines import Kolors, whose module uses torch.jit.script: not ours to fix.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


configure_environment()
