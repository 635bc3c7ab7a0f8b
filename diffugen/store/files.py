"""Files under the output root: atomic writes (a killed run leaves no partial file) and paths that
cannot leave the root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import OutputPathError


def write_atomic(path: Path, write: Callable[[str], object]) -> Path:
    """Write a file through a temporary name and rename it, so a killed run leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed temporary name per file: a write killed half-way is redone (and renamed away) by the
    # run that makes the same sample again, so no stray file survives a resumed run.
    tmp = str(path.with_name(f".{path.stem}.tmp{path.suffix}"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` or RGB ``(H, W, 3)`` array as PNG (atomically)."""
    def _write(tmp: str) -> None:
        img = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(tmp, img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"could not write {path}")

    return write_atomic(path, _write)


def safe_child(root: Path, *parts: str) -> Path:
    """``root/parts...``, refusing any result outside ``root`` (no ``..`` or absolute escapes)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise OutputPathError(f"{path} is outside the output root {root}")
    return path
