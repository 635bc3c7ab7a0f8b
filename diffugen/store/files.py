"""Files under the output root: atomic writes (a killed run leaves no partial file) and paths that
cannot leave the root."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import OutputPathError


_TMP = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp(\.\w+)?$")


def write_atomic(path: Path, write: Callable[[str], object]) -> Path:
    """Write a file through a temporary name and rename it, so a killed run leaves no partial file.

    The temporary name carries the process id: runs making the same file at once (concurrent runs
    of one config) never write into each other's temporary file. A killed run's temporaries are
    removed by :func:`remove_stale_temporaries` when the next run starts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}"))
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
    """``root/parts...``, refusing any result outside ``root``: no ``..``, absolute parts, or symbolic
    links (anywhere on the way) that lead out of it."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise OutputPathError(f"{root.joinpath(*parts)} leads to {path}, outside the output root {root}: "
                              f"DiffuGen writes only inside it (is a folder on the way a symbolic link?)")
    return path


def check_output_root(root: Path) -> Path:
    """The resolved output root, or an :class:`OutputPathError` when it exists and is not a folder."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise OutputPathError(f"output_root {root.resolve()} exists and is not a folder")
    return root.resolve()


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files of :func:`write_atomic` left under ``folder`` by processes that are
    gone (a killed run); returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            m = _TMP.match(name)
            if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed
