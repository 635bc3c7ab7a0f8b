"""The FiftyOne side: the persistent dataset, its fields, DAAM labels as FiftyOne labels, batched writes.

Each sample holds its image, the prompt and its provenance, one heatmap per class word and the
unsupervised labels:

==================== ===================================================================
``heatmap``           ``fo.Heatmap``: the class words' heatmaps combined (max), for viewing
``word_heatmaps``     list of ``fo.Heatmap``, one per class word (``word``, ``label``); relabel reads these
``daam_segmentation`` ``fo.Segmentation`` (PNG ``mask_path``); classes in ``dataset.mask_targets``
``daam_polygons``     ``fo.Polylines``, one closed polygon per instance, ``confidence`` = label score
``daam_detections``   ``fo.Detections`` with instance masks, ``confidence`` = label score
==================== ===================================================================

plus ``prompt``, ``negative_prompt``, ``prompt_template``, ``attributes`` (one embedded document,
``attributes.<name>`` filterable in the App), ``seed``, ``task``, ``model``, ``steps``,
``guidance_scale``, ``parent_id``, ``class_words`` and ``key`` (what resume matches on).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

import fiftyone as fo

from .labels.unsupervised import LabelParams, WordLabels, extract_labels, semantic_mask

logger = logging.getLogger(__name__)

DAAM_FIELDS = ("daam_segmentation", "daam_polygons", "daam_detections")


# ---- files ---------------------------------------------------------------------------------------
def write_atomic(path: Path, write) -> Path:
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
        raise ValueError(f"{path} is outside the output root {root}")
    return path


# ---- labels --------------------------------------------------------------------------------------
@dataclass
class DaamLabels:
    """Unsupervised labels of one image, before they become FiftyOne labels."""

    words: list[str]
    classes: list[str]
    word_labels: list[WordLabels]
    mask: np.ndarray  # uint8 (H, W), class id per pixel (index in the dataset's classes + 1)


def label_heatmaps(word_maps: Sequence[np.ndarray], words: Sequence[str], classes: Sequence[str],
                   class_ids: dict[str, int], params: LabelParams) -> DaamLabels:
    """Per-word uint8 heatmaps ``(H, W)`` → :class:`DaamLabels` (the one labeling path: generate and relabel)."""
    word_labels = [extract_labels(m.astype(np.float32) / 255.0, params) for m in word_maps]
    if word_maps:
        mask = semantic_mask(word_labels, [class_ids[c] for c in classes], word_maps[0].shape, heatmaps=list(word_maps))
    else:
        mask = np.zeros((1, 1), np.uint8)
    return DaamLabels(list(words), list(classes), word_labels, mask)


def to_fiftyone(labels: DaamLabels, mask_path: Path) -> dict[str, fo.Label]:
    """FiftyOne labels of :class:`DaamLabels`; writes the semantic mask to ``mask_path``."""
    polylines, detections = [], []
    for word, cls, wl in zip(labels.words, labels.classes, labels.word_labels):
        for inst in wl.instances:
            score = float(inst.score)
            polylines.append(
                fo.Polyline(label=cls, points=[inst.polygon.tolist()], closed=True, filled=True, confidence=score, word=word)
            )
            detections.append(
                fo.Detection(label=cls, bounding_box=list(map(float, inst.box)), mask=inst.mask, confidence=score,
                             word=word, area=float(inst.area))
            )
    write_png(mask_path, labels.mask)
    return {
        "daam_segmentation": fo.Segmentation(mask_path=str(mask_path)),
        "daam_polygons": fo.Polylines(polylines=polylines),
        "daam_detections": fo.Detections(detections=detections),
    }


# ---- the dataset ---------------------------------------------------------------------------------
def open_dataset(name: str, classes: Sequence[str], config: dict | None = None) -> fo.Dataset:
    """Load or create the persistent dataset ``name``; keep ``classes`` as the DAAM mask targets.

    Classes only ever get appended (ids of existing classes never change), and each config that
    ran on the dataset is kept in ``dataset.info["diffugen_configs"]`` (the latest also as
    ``info["diffugen_config"]``).
    """
    ds = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    if ds.media_type is None:
        ds.media_type = "image"  # set up front: concurrent writers (shards) must not race to set it
    targets = dict(ds.mask_targets.get("daam_segmentation", {}))
    known = set(targets.values())
    for cls in classes:
        if cls not in known:
            targets[len(targets) + 1] = cls
            known.add(cls)
    if targets != ds.mask_targets.get("daam_segmentation"):
        # DAAM and YOLO masks share class ids, so they can be compared pixel for pixel.
        ds.mask_targets = {**ds.mask_targets, "daam_segmentation": targets, "yolo_segmentation": targets}
    if config is not None:
        history = list(ds.info.get("diffugen_configs", []))
        if not history or history[-1] != config:
            history.append(config)
        ds.info["diffugen_configs"] = history
        ds.info["diffugen_config"] = config
    ds.save()
    _declare_fields(ds)
    return ds


def class_ids(ds: fo.Dataset) -> dict[str, int]:
    return {cls: int(i) for i, cls in ds.mask_targets.get("daam_segmentation", {}).items()}


def _declare_fields(ds: fo.Dataset) -> None:
    # Declared once up front, so batched inserts need no schema expansion and the App knows the types.
    schema = ds.get_field_schema()
    for name, ftype, kwargs in (
        ("key", fo.StringField, {}), ("task", fo.StringField, {}), ("prompt", fo.StringField, {}),
        ("negative_prompt", fo.StringField, {}), ("prompt_template", fo.StringField, {}),
        ("seed", fo.IntField, {}), ("model", fo.StringField, {}), ("steps", fo.IntField, {}),
        ("guidance_scale", fo.FloatField, {}), ("strength", fo.FloatField, {}),
        ("parent_id", fo.StringField, {}), ("class_words", fo.ListField, {"subfield": fo.StringField}),
        ("heatmap", fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Heatmap}),
        ("word_heatmaps", fo.ListField, {"subfield": fo.EmbeddedDocumentField, "embedded_doc_type": fo.Heatmap}),
        ("daam_segmentation", fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Segmentation}),
        ("daam_polygons", fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Polylines}),
        ("daam_detections", fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Detections}),
        ("attributes", fo.EmbeddedDocumentField, {"embedded_doc_type": fo.DynamicEmbeddedDocument}),
    ):
        if name not in schema:
            ds.add_sample_field(name, ftype, **kwargs)
    if "key" not in ds.list_indexes():
        ds.create_index("key")


def existing_keys(ds: fo.Dataset) -> set[str]:
    """Keys of the samples already in the dataset (one query)."""
    return set(k for k in ds.distinct("key") if k)


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


class SampleWriter:
    """Buffers samples and inserts them ``batch_size`` at a time (one database round-trip per batch).

    A sample is inserted whole, with all its labels, after its files exist: a run killed at any
    point leaves either a complete sample or none (whose files the next run rewrites).
    """

    def __init__(self, ds: fo.Dataset, batch_size: int = 64):
        self.ds = ds
        self.batch_size = batch_size
        self.pending: list[fo.Sample] = []
        self.written = 0
        self._schema = set(ds.get_field_schema())

    def add(self, sample: fo.Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        fields = set().union(*(s.field_names for s in self.pending))
        if fields <= self._schema and self._insert_documents():
            pass
        else:  # new fields: FiftyOne's public path, which also extends the schema
            self.ds.add_samples(self.pending, expand_schema=True, validate=False, progress=False)
            self._schema = set(self.ds.get_field_schema())
        self.written += len(self.pending)
        self.pending = []

    def _insert_documents(self) -> bool:
        """Insert the samples' documents in one ``insert_many``, without attaching the Sample objects.

        ``add_samples`` rebuilds every inserted sample from its document afterwards (walking each
        polygon point), which costs ~3× the insert itself; we never use the objects again. This
        uses FiftyOne internals (``_make_dict``, ``_sample_collection``): if they change, return
        False and the caller takes the public path.
        """
        try:
            now = _dt.datetime.utcnow()
            docs = [self.ds._make_dict(s, created_at=now, last_modified_at=now) for s in self.pending]
            self.ds._sample_collection.insert_many(docs)
        except AttributeError:
            return False
        return True

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
