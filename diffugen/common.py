"""Names every stage shares: the tasks, the progress callback, and defaults the CLI, the operators
and the library must agree on (each is defined here once)."""

from __future__ import annotations

import re
from typing import Callable, Literal

TASKS = ("txt2img", "img2img", "inpaint")  # in the order they run: each later task starts from an earlier one
Task = Literal["txt2img", "img2img", "inpaint"]

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)

# Image sizes and step counts any config, task section or form may ask for.
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 8, 4096, 8
MIN_STEPS, MAX_STEPS = 1, 1000

YOLO_START_MODEL = "yolov8n-seg.yaml"  # bootstrap training from scratch: a yaml, so nothing is downloaded
STALE_AFTER_S = 600.0  # a running shard silent this long is dead
DEFAULT_SPLIT = "train=0.8,val=0.2"
REVIEW_MIN_SCORE = 0.5  # labels scored below it are doubtful: queued for review, left out of curated


def report(progress: ProgressFn | None, done: int, total: int, message: str) -> None:
    """Call ``progress`` when there is one."""
    if progress is not None:
        progress(done, total, message)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def dataset_name_problem(name: object) -> str | None:
    """What is wrong with a dataset name (``None`` when nothing is): configs, the CLI and the operators
    all check names here, because a name is also a folder under the output root."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        return f"must be 1-100 letters, digits, '.', '_' or '-' (it names a folder under output_root); got {name!r}"
    return None


MAX_SEED = 2**63 - 1  # seeds are stored as MongoDB 64-bit integers

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?|\d+(,\d+)*)$")


def device_problem(device: object) -> str | None:
    """What is wrong with a device name (``None`` when nothing is): ``auto``, ``cpu``, ``mps``, ``cuda``,
    ``cuda:N``, or GPU indices ``0`` / ``0,1`` (ultralytics' form)."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        return "expected auto, cpu, mps, cuda, cuda:N or a GPU index like 0"
    return None
