"""Recompute the unsupervised labels of existing samples from their stored per-word heatmaps.

No image is regenerated: each sample's ``word_heatmaps`` PNGs are read back and go through the
same :func:`diffugen.dataset.label_heatmaps` path as during generation, with new parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import fiftyone as fo
import numpy as np
from tqdm.auto import tqdm

from . import dataset as dsu
from .errors import DiffuGenError
from .labels.unsupervised import LabelParams


def read_word_heatmaps(sample_id: str, word_heatmaps) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The stored per-word heatmaps of a sample: uint8 maps ``(H, W)``, their words and classes."""
    maps, words, classes = [], [], []
    for hm in word_heatmaps or []:
        m = cv2.imread(hm.map_path, cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DiffuGenError(f"heatmap file missing for sample {sample_id}: {hm.map_path}")
        maps.append(m)
        words.append(hm["word"])
        classes.append(hm["label"])
    return maps, words, classes


def relabel(collection: fo.core.collections.SampleCollection, params: LabelParams,
            progress: Callable[[int, int, str], None] | None = None, batch_size: int = 64) -> int:
    """Rewrite ``daam_*`` fields of every sample of ``collection`` (a dataset or view) with ``params``.

    Returns:
        The number of samples relabeled. Samples without stored heatmaps are left as they are.
    """
    if "word_heatmaps" not in collection.get_field_schema():
        raise DiffuGenError(f"{collection.name!r} has no 'word_heatmaps' field: it was not made by diffugen generate")
    ds = collection._dataset
    ids = dsu.class_ids(ds)
    view = collection.exists("word_heatmaps").select_fields(["word_heatmaps", *dsu.DAAM_FIELDS])
    total = len(view)
    done = 0
    for sample in tqdm(view.iter_samples(autosave=True, batch_size=batch_size), total=total, desc="relabel"):
        maps, words, classes = read_word_heatmaps(sample.id, sample["word_heatmaps"])
        if maps:
            labels = dsu.label_heatmaps(maps, words, classes, ids, params)
            old = sample["daam_segmentation"]
            mask_path = Path(old.mask_path) if old is not None and old.mask_path else Path(sample["word_heatmaps"][0].map_path).parent.parent / "masks" / f"{sample.id}.png"
            for name, label in dsu.to_fiftyone(labels, mask_path).items():
                sample[name] = label
        done += 1
        if progress is not None:
            progress(done, total, f"relabel {done}/{total}")
    ds.info["diffugen_label_params"] = params.model_dump(mode="json")
    ds.save()
    return done
