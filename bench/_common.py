"""Helpers shared by the bench scripts (not part of the library).

Importing this module puts the repository root on ``sys.path``, so the scripts run without an install.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


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
    from diffugen.builtin import build_sd15_sized_pipeline

    return build_sd15_sized_pipeline(sample_size)


def build_pipeline(sd_unet: bool, device: str, dtype: str | None = None):
    """``builtin:tiny`` (default) or the SD-1.5-sized variant, on ``device``, progress bar off."""
    import torch

    from diffugen.builtin import build_tiny_pipeline

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
    from diffugen.toyworld.scene import recover_instances

    found = [r for r in recover_instances(image, tolerance, min_area, open_noise=True) if r.color == colour]
    return sorted(found, key=lambda r: r.area, reverse=True)


def iou(a, b) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    import numpy as np

    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def judged_kinds(model: str, target: str | None = None) -> tuple[tuple[str, ...], bool]:
    """The kinds a blob is judged among, and whether holes are round: those of the model's world
    (:func:`diffugen.toyworld.load_world`: the shapes a fine-tune added, and their hollow kinds), and
    ``target`` (the shape a proof asks for: a ``"house"`` the world lacks)."""
    from diffugen.toyworld import load_world
    from diffugen.toyworld.scene import ALL_LABELS

    world = load_world(None if model == "builtin:toyworld" else model)
    more = list(world.get("shapes", ())) + [f"hollow {s}" for s in world.get("hollow_shapes", ())]
    more += [target] if target else []
    return ALL_LABELS + tuple(k for k in dict.fromkeys(more) if k not in ALL_LABELS), bool(world.get("round_holes"))


def foreground(image: "np.ndarray", distance: float = 60.0) -> "np.ndarray":
    """The largest blob of pixels that stand out from the background (:func:`~diffugen.toyworld.scene.stands_out`).

    Not by palette colour as the other toy-world benches judge: conditioning without a colour word
    draws objects in several palette colours at once, which colour segmentation splits into pieces.
    """
    import cv2
    import numpy as np

    from diffugen.toyworld.scene import stands_out

    far = cv2.morphologyEx(stands_out(image, distance).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(far, connectivity=8)
    if n < 2:
        return np.zeros(far.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
