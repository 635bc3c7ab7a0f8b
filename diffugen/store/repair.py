"""Repair before a run: samples whose files are gone or cut short are dropped (with what was made
from them), so the run makes them again."""

from __future__ import annotations

import logging
import os

import fiftyone as fo

logger = logging.getLogger(__name__)

_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of every complete PNG
_JPEG_END = b"\xff\xd9"


def media_intact(path: str) -> bool:
    """Whether a local file exists and is complete: a PNG ends with its IEND chunk, a JPEG with its end
    marker, anything else is not empty. Reads the file's last bytes only, not the image."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return False
        lower = path.lower()
        end = _PNG_END if lower.endswith(".png") else _JPEG_END if lower.endswith((".jpg", ".jpeg")) else b""
        if not end:
            return True
        with open(path, "rb") as f:
            f.seek(max(0, size - len(end)))
            return f.read() == end
    except OSError:
        return False


# The files a generated sample points at: its image, then its heatmaps and masks.
FILE_FIELDS = ("filepath", "heatmap.map_path", "word_heatmaps.map_path", "daam_segmentation.mask_path",
                "yolo_segmentation.mask_path")


def file_fields(ds: fo.Dataset) -> list[str]:
    """The dataset's fields that hold file paths: :data:`FILE_FIELDS` and each class's ``heatmap_<class>``."""
    schema = ds.get_field_schema(flat=True)  # includes "heatmap.map_path" etc. once such labels exist
    classes = [f for f in schema if f.startswith("heatmap_") and f.endswith(".map_path")]
    return [f for f in FILE_FIELDS if f in schema] + classes


def media_paths(ds: fo.Dataset) -> list[str]:
    """Every local file the dataset's samples point at (images, heatmaps, masks)."""
    out: list[str] = []
    for column in ds.values(file_fields(ds)):
        for value in column:
            out += [p for p in (value if isinstance(value, list) else [value]) if p and "://" not in p]
    return out


def drop_incomplete(ds: fo.Dataset) -> int:
    """Delete the samples whose image or label files are gone or unreadable (:func:`media_intact`: cut
    short, empty), and every sample made from them.

    Only DiffuGen's own samples (with a ``key``) and local files are checked. Samples are inserted
    only after their files exist, so a missing file means it was deleted or moved since (an output
    folder removed, a database reused with another output root), and a cut one was damaged since. Such a
    sample would break img2img/inpaint (which read their parent's image and mask) and the App;
    dropping it lets the run regenerate it like any missing sample. Its children go too: their
    ``parent_id`` would point at nothing once the parent is remade under a new id.

    Returns:
        How many samples were deleted (0 in the usual case, after one query and a ``stat`` and an
        8-byte read per file).
    """
    ids, keys, parents, *columns = ds.values(["id", "key", "parent_id", *file_fields(ds)])
    broken: set[str] = set()
    example = ""
    for i, sid in enumerate(ids):
        if not keys[i]:
            continue  # not made by DiffuGen (imported by a user): never ours to delete
        for col in columns:
            paths = col[i] if isinstance(col[i], list) else [col[i]]
            gone = next((p for p in paths if p and "://" not in p and not media_intact(p)), None)
            if gone is not None:
                broken.add(sid)
                example = example or gone
                break
    if not broken:
        return 0
    children: dict[str, list[str]] = {}
    for sid, parent in zip(ids, parents):
        if parent:
            children.setdefault(parent, []).append(sid)
    direct = len(broken)
    stack = list(broken)
    while stack:  # descendants: img2img of txt2img, inpaint of img2img, ...
        for child in children.get(stack.pop(), []):
            if child not in broken:
                broken.add(child)
                stack.append(child)
    logger.warning("dataset %r: %d sample(s) point at files that are missing or unreadable (e.g. %s); deleting them and "
                   "%d sample(s) made from them, so this run makes them again", ds.name, direct, example,
                   len(broken) - direct)
    ds.delete_samples(list(broken))
    return len(broken)
