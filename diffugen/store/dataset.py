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
import logging
import re
from typing import Sequence

import fiftyone as fo
from fiftyone.core.collections import SampleCollection

from ..errors import DatasetError

logger = logging.getLogger(__name__)

LABEL_LISTS = (fo.Detections, fo.Polylines)
KEY_INDEX = "key"

def open_dataset(name: str, classes: Sequence[str], config: dict | None = None) -> fo.Dataset:
    """Load or create the persistent dataset ``name``; keep ``classes`` as the DAAM mask targets.

    Classes only ever get appended (ids of existing classes never change), and each config that
    ran on the dataset is kept in ``dataset.info["diffugen_configs"]`` (the latest also as
    ``info["diffugen_config"]``).
    """
    ds = _load_or_create(name)
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
    _declare_fields(ds, list(targets.values()))
    return ds


def class_heatmap_field(cls: str) -> str:
    """The sample field holding one dataset class's heatmap, where the App draws it (``heatmap_car``)."""
    return "heatmap_" + (re.sub(r"[^0-9a-z]+", "_", cls.lower()).strip("_") or "class")


def _load_or_create(name: str) -> fo.Dataset:
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    from pymongo.errors import DuplicateKeyError

    try:
        return fo.Dataset(name, persistent=True)
    # Another run created it between the two calls: FiftyOne says so (ValueError) when it sees the name, the
    # database's unique name index (DuplicateKeyError) when both inserted at once.
    except (ValueError, DuplicateKeyError):
        return fo.load_dataset(name)


def class_ids(ds: fo.Dataset) -> dict[str, int]:
    return {cls: int(i) for i, cls in ds.mask_targets.get("daam_segmentation", {}).items()}


def _declare_fields(ds: fo.Dataset, classes: Sequence[str]) -> None:
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
        *((class_heatmap_field(c), fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Heatmap}) for c in classes),
    ):
        if name not in schema:
            ds.add_sample_field(name, ftype, **kwargs)
    declare_label_fields(ds)
    ensure_unique_keys(ds)


def declare_label_fields(ds: fo.Dataset) -> None:
    """The fields written with the DAAM labels, by generate and by relabel: ``missing_words`` and
    ``daam_params`` (the label parameters each sample's DAAM labels were made with)."""
    flat = ds.get_field_schema(flat=True)
    if "missing_words" not in flat:
        ds.add_sample_field("missing_words", fo.ListField, subfield=fo.StringField)
    from ..labels.daam import LabelParams

    # threshold is kept as text ("otsu" or "0.5"); one call with its subfields (each call reloads the schema)
    subfields = []
    for n, info in LabelParams.model_fields.items():
        kind = {str: fo.StringField, bool: fo.BooleanField}.get(type(info.default), fo.FloatField)
        f = fo.StringField() if n == "threshold" else kind()
        f.name = n
        subfields.append(f)
    if "daam_params" not in flat:
        ds.add_sample_field("daam_params", fo.EmbeddedDocumentField, embedded_doc_type=fo.DynamicEmbeddedDocument,
                            fields=subfields)
        flat = ds.get_field_schema(flat=True)
    for f in subfields:  # a dataset whose daam_params predates one of them
        if f"daam_params.{f.name}" not in flat:
            ds.add_sample_field(f"daam_params.{f.name}", type(f))


def ensure_unique_keys(ds: fo.Dataset) -> None:
    """A unique index on ``key`` (DiffuGen's samples; samples without a key are not indexed), so any
    number of concurrent runs, shards or operators insert each key once.

    A dataset that already holds duplicate keys (made before the index existed) keeps the oldest
    sample of each key; the others are identical copies (same key, same files) and are deleted.
    """
    info = ds.get_index_information().get(KEY_INDEX)
    if info is not None and info.get("unique"):
        return
    if info is not None:
        ds.drop_index(KEY_INDEX)
    spec = dict(unique=True, partialFilterExpression={"key": {"$type": "string"}})
    try:
        ds.create_index(KEY_INDEX, **spec)
    except Exception:  # noqa: BLE001 - pymongo's DuplicateKeyError/OperationFailure; checked below
        extra = _duplicate_key_samples(ds)
        if not extra:
            raise
        logger.warning("dataset %r: %d duplicate sample(s) of the same key (from concurrent runs before keys were "
                       "unique) deleted; each key keeps its oldest sample", ds.name, len(extra))
        ds.delete_samples(extra)
        ds.create_index(KEY_INDEX, **spec)


def _duplicate_key_samples(ds: fo.Dataset) -> list[str]:
    ids, keys = ds.exists("key").sort_by("_id").values(["id", "key"])
    seen: set[str] = set()
    extra = []
    for i, k in zip(ids, keys):
        if k in seen:
            extra.append(i)
        seen.add(k)
    return extra


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
