"""Repair before a run: samples whose files have gone are dropped (with what was made from them), so
the run makes them again."""

from __future__ import annotations

import logging
import os

import fiftyone as fo

logger = logging.getLogger(__name__)

# The files a generated sample points at: its image, then its heatmaps and masks.
_FILE_FIELDS = ("filepath", "heatmap.map_path", "word_heatmaps.map_path", "daam_segmentation.mask_path",
                "yolo_segmentation.mask_path")


def drop_incomplete(ds: fo.Dataset) -> int:
    """Delete the samples whose image or label files are gone, and every sample made from them.

    Only DiffuGen's own samples (with a ``key``) and local files are checked. Samples are inserted
    only after their files exist, so a missing file means it was deleted or moved since (an output
    folder removed, a database reused with another output root). Such a
    sample would break img2img/inpaint (which read their parent's image and mask) and the App;
    dropping it lets the run regenerate it like any missing sample. Its children go too: their
    ``parent_id`` would point at nothing once the parent is remade under a new id.

    Returns:
        How many samples were deleted (0 in the usual case, after one query and one ``stat`` per file).
    """
    schema = ds.get_field_schema(flat=True)  # includes "heatmap.map_path" etc. once such labels exist
    fields = [f for f in _FILE_FIELDS if f in schema]
    ids, keys, parents, *columns = ds.values(["id", "key", "parent_id", *fields])
    broken: set[str] = set()
    example = ""
    for i, sid in enumerate(ids):
        if not keys[i]:
            continue  # not made by DiffuGen (imported by a user): never ours to delete
        for col in columns:
            paths = col[i] if isinstance(col[i], list) else [col[i]]
            gone = next((p for p in paths if p and "://" not in p and not os.path.exists(p)), None)
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
    logger.warning("dataset %r: %d sample(s) point at files that no longer exist (e.g. %s); deleting them and "
                   "%d sample(s) made from them, so this run makes them again", ds.name, direct, example,
                   len(broken) - direct)
    ds.delete_samples(list(broken))
    return len(broken)
