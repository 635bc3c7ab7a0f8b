"""Recompute the DAAM labels of existing samples from their stored per-word heatmaps (or preview it).

No image is regenerated: each sample's ``word_heatmaps`` PNGs are read back and go through the
same :func:`diffugen.labels.daam.label_heatmaps` path as during generation, with new parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
from fiftyone.core.collections import SampleCollection
import numpy as np
from tqdm.auto import tqdm

from ..common import REVIEW_MIN_SCORE, ProgressFn, report
from ..errors import DatasetError
from ..store.dataset import class_ids, declare_label_fields
from .daam import DAAM_FIELDS, DaamLabels, LabelParams, label_heatmaps, mask_name, missing_words, to_fiftyone


@dataclass
class StoredHeatmaps:
    """A sample's stored per-word heatmaps: uint8 maps ``(H, W)``, their words, classes, and scales in
    units of attention (``None`` for heatmaps stored without ``floor``/``peak``), and what made them (``"cross"``
    when not recorded: the UNet families', all a dataset held before the joint families had weights of their own)."""

    maps: list[np.ndarray]
    words: list[str]
    classes: list[str]
    ranges: list[tuple[float, float]] | None
    attention: str = "cross"


def read_word_heatmaps(sample_id: str, word_heatmaps) -> StoredHeatmaps:
    """The stored per-word heatmaps of a sample (its ``word_heatmaps`` field)."""
    out = StoredHeatmaps([], [], [], [])
    for hm in word_heatmaps or []:
        m = cv2.imread(hm.map_path, cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DatasetError(f"heatmap file missing for sample {sample_id}: {hm.map_path}")
        out.maps.append(m)
        out.words.append(hm["word"])
        out.classes.append(hm["label"])
        floor, peak = (hm[k] if hm.has_field(k) else None for k in ("floor", "peak"))
        if hm.has_field("attention") and hm["attention"]:
            out.attention = hm["attention"]
        if out.ranges is not None and floor is not None and peak is not None:
            out.ranges.append((float(floor), float(peak)))
        else:
            out.ranges = None
    return out


def read_image(sample_id: str, filepath: str, shape: tuple[int, int]) -> np.ndarray:
    """A sample's image as ``(H, W, 3)`` uint8 RGB, what its labels are snapped and grown to (``labels.snap``,
    ``labels.grow``); ``shape``: its heatmaps' ``(H, W)``, which the image must have."""
    image = cv2.imread(filepath, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"image file missing or unreadable for sample {sample_id}: {filepath}")
    if image.shape[:2] != tuple(shape):
        raise DatasetError(f"image of sample {sample_id} is {image.shape[1]}x{image.shape[0]} px, its heatmaps "
                           f"{shape[1]}x{shape[0]}: {filepath} is not the image they were made with")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def label_stored(stored: StoredHeatmaps, ids: dict[str, int], params: LabelParams,
                 image: np.ndarray | None = None) -> DaamLabels:
    """:func:`label_heatmaps` of stored heatmaps (and of their sample's ``image``, :func:`read_image`)."""
    return label_heatmaps(stored.maps, stored.words, stored.classes, ids, params, stored.ranges, image, stored.attention)


def relabel(collection: SampleCollection, params: LabelParams,
            progress: ProgressFn | None = None, batch_size: int = 64) -> int:
    """Rewrite ``daam_*`` fields of every sample of ``collection`` (a dataset or view) with ``params``.

    Returns:
        The number of samples relabeled. Samples without stored heatmaps are left as they are.
    """
    if "word_heatmaps" not in collection.get_field_schema():
        raise DatasetError(f"{collection.name!r} has no 'word_heatmaps' field: it was not made by diffugen generate")
    ds = collection._dataset
    ids = class_ids(ds)
    declare_label_fields(ds)
    view = collection.exists("word_heatmaps").select_fields(["word_heatmaps", *DAAM_FIELDS, "daam_params",
                                                            "missing_words"])
    total = len(view)
    done = 0
    for sample in tqdm(view.iter_samples(autosave=True, batch_size=batch_size), total=total, desc="relabel"):
        stored = read_word_heatmaps(sample.id, sample["word_heatmaps"])
        words = stored.words
        if stored.maps:
            image = read_image(sample.id, sample.filepath, stored.maps[0].shape) if params.reads_image else None
            labels = label_stored(stored, ids, params, image)
            old = sample["daam_segmentation"]
            if old is not None and old.mask_path:
                folder, stem = Path(old.mask_path).parent, Path(old.mask_path).name.split(".")[0]
            else:
                folder, stem = Path(sample["word_heatmaps"][0].map_path).parent.parent / "masks", sample.id
            for name, label in to_fiftyone(labels, folder / mask_name(stem, labels.mask), params).items():
                sample[name] = label
            unheard = [w for w in sample["missing_words"] or [] if w not in words]  # words that had no heatmap
            sample["missing_words"] = missing_words(labels, [*words, *unheard], REVIEW_MIN_SCORE)
        done += 1
        report(progress, done, total, f"relabel {done}/{total}")
    # The latest relabel run; what each sample's labels were made with is its own ``daam_params``.
    ds.info["diffugen_label_params"] = params.model_dump(mode="json")
    ds.save()
    return done


@dataclass
class RelabelPreview:
    samples: int
    labels_before: int
    labels_after: int
    per_sample: list[dict]  # {"id", "before", "after"}

    def to_dict(self) -> dict:
        return {"samples": self.samples, "labels_before": self.labels_before,
                "labels_after": self.labels_after, "per_sample": self.per_sample}


def preview_relabel(collection: SampleCollection, params: LabelParams, limit: int = 50) -> RelabelPreview:
    """What :func:`relabel` with ``params`` would do, without writing anything.

    Reads the stored heatmaps of at most ``limit`` samples and counts their DAAM instances now and
    with ``params`` (the same :func:`label_heatmaps` path as relabel).
    """
    if "word_heatmaps" not in collection.get_field_schema():
        raise DatasetError(f"{collection.name!r} has no 'word_heatmaps' field: it was not made by diffugen generate")
    ids = class_ids(collection._root_dataset)
    view = collection.exists("word_heatmaps").limit(limit)
    sample_ids, paths, heatmaps, before = view.values(["id", "filepath", "word_heatmaps", "daam_detections.detections"])
    per_sample = []
    for sid, path, hms, old in zip(sample_ids, paths, heatmaps, before):
        stored = read_word_heatmaps(sid, hms)
        image = read_image(sid, path, stored.maps[0].shape) if stored.maps and params.reads_image else None
        labels = label_stored(stored, ids, params, image) if stored.maps else None
        after = sum(len(wl.instances) for wl in labels.word_labels) if labels else 0
        per_sample.append({"id": sid, "before": len(old or []), "after": after})
    return RelabelPreview(len(per_sample), sum(p["before"] for p in per_sample),
                          sum(p["after"] for p in per_sample), per_sample)
