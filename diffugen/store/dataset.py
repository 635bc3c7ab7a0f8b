"""The persistent dataset: its schema, class ids and the keys it already holds.

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
from typing import Sequence

import fiftyone as fo
from fiftyone.core.collections import SampleCollection

from ..errors import DatasetError

LABEL_LISTS = (fo.Detections, fo.Polylines)

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


def label_fields(collection: SampleCollection, types: Sequence[type] = LABEL_LISTS) -> list[str]:
    """Names of the collection's top-level label fields of the given label types."""
    out = []
    for name, f in collection.get_field_schema().items():
        doc_type = getattr(f, "document_type", None)
        if doc_type is not None and any(issubclass(doc_type, t) for t in types):
            out.append(name)
    return out


def check_label_field(collection: SampleCollection, field: str, types: Sequence[type] = LABEL_LISTS, purpose: str = "used here") -> type:
    """Which of ``types`` ``field`` is; a :class:`DatasetError` naming the usable fields when it is none.

    Args:
        purpose: what the field is for, in the error (``"exported as yolo"``).
    """
    schema = collection.get_field_schema()
    usable = label_fields(collection, types)
    if field not in schema:
        raise DatasetError(f"field {field!r} not found in {collection.name!r}; label fields {purpose}: {usable}")
    doc_type = getattr(schema[field], "document_type", None)
    for t in types:
        if doc_type is not None and issubclass(doc_type, t):
            return t
    wanted = " or ".join(t.__name__ for t in types)
    raise DatasetError(f"field {field!r} cannot be {purpose}: it is not a {wanted} field (it is {schema[field]}); "
                       f"usable fields: {usable}")


def load(name: str) -> fo.Dataset:
    """The dataset ``name``, or a :class:`DatasetError` listing the datasets there are."""
    if not fo.dataset_exists(name):
        raise DatasetError(f"no FiftyOne dataset named {name!r}; datasets here: {fo.list_datasets()}")
    return fo.load_dataset(name)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
