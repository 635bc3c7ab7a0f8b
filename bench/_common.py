"""Setup and helpers shared by the bench scripts (not part of the library).

Run a bench from the repository root with the virtualenv active: ``python bench/NAME.py``. The
package is installed (editable), and this module is found as ``_common`` because it sits in the
script's own folder (``sys.path[0]``). A bench that uses FiftyOne calls :func:`private_database`
before it imports fiftyone: it never writes into a database the user has running.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

_DATABASE: str | None = None


def private_database() -> str:
    """A mongod of this process's own, on a free port in a temporary folder, gone when the process
    exits (:func:`diffugen.testing.start_private_mongod`; FiftyOne would otherwise join any database
    service already running, whatever ``FIFTYONE_DATABASE_DIR`` says). Its URI; once per process,
    before fiftyone is imported. Subprocesses (workers) inherit it through ``FIFTYONE_DATABASE_URI``."""
    global _DATABASE
    if _DATABASE is None:
        if "fiftyone" in sys.modules:
            raise RuntimeError("private_database() must run before fiftyone is imported")
        from diffugen.testing import start_private_mongod

        uri = start_private_mongod("diffugen-bench-db-")
        fo = sys.modules.get("fiftyone")
        if fo is not None and getattr(getattr(fo, "config", None), "database_uri", uri) != uri:
            raise RuntimeError("fiftyone was imported before its private database was set: it would join another one")
        _DATABASE = uri
    return _DATABASE


def pick_device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timer(out: list[float], device: str = "cpu", cpu_out: list[float] | None = None):
    """Append the wall time of the block (device-synchronised) to ``out``, its process CPU time to ``cpu_out``.

    On a shared machine the CPU time (all threads of this process) is far less disturbed by other
    load than the wall time; on a GPU only the wall time means anything.
    """
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    yield
    sync(device)
    out.append(time.perf_counter() - t0)
    if cpu_out is not None:
        cpu_out.append(time.process_time() - c0)


def median(xs) -> float:
    return statistics.median(xs)


def mark(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def build_sd_sized_pipeline(sample_size: int = 64):
    """A StableDiffusionPipeline with SD-1.5-sized components and random weights (no download); for GPUs."""
    from diffugen.generation.builtin import build_sd15_sized_pipeline

    return build_sd15_sized_pipeline(sample_size)


def build_pipeline(sd_unet: bool, device: str, dtype: str | None = None):
    """``builtin:tiny`` (default) or the SD-1.5-sized variant, on ``device``, progress bar off."""
    import torch

    from diffugen.generation.builtin import build_tiny_pipeline

    pipe = build_sd_sized_pipeline() if sd_unet else build_tiny_pipeline()
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        dtype or ("float16" if str(device).startswith("cuda") else "float32")
    ]
    pipe = pipe.to(device)
    if torch_dtype != torch.float32:
        pipe = pipe.to(dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def machine_line(device: str) -> str:
    import platform

    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if str(device).startswith("cuda") else ""
    return (f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"(threads={torch.get_num_threads()}), python {platform.python_version()}, device={device}{gpu}")


def colour_blobs(image, colour: str, tolerance: float = 60.0, min_area: int = 12) -> list:
    """The toy-world instances of ``colour`` in ``image`` (truth read back by colour), largest first."""
    from diffugen.toyworld.truth import recover_instances

    found = [r for r in recover_instances(image, tolerance, min_area, open_noise=True) if r.color == colour]
    return sorted(found, key=lambda r: r.area, reverse=True)


def iou(a, b) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    import numpy as np

    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
