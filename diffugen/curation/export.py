"""Export a labeled collection for training: YOLO (segmentation), COCO (polygons) or mask images.

``export_dataset`` splits the samples with :func:`fiftyone.utils.random.random_split` (the split
names become sample tags, so the App shows which sample went where) and writes each split with
FiftyOne's own exporters:

=========== ================================ =====================================================
``format``   FiftyOne type                    layout under ``out_dir``
=========== ================================ =====================================================
``yolo``     ``fo.types.YOLOv5Dataset``       ``dataset.yaml``, ``images/<split>/``,
                                              ``labels/<split>/`` (instance masks → YOLO-seg polygons)
``coco``     ``fo.types.COCODetectionDataset`` ``<split>/data/``, ``<split>/labels.json`` (polygons)
``masks``    ``fo.types.ImageSegmentationDirectory`` ``<split>/data/``, ``<split>/labels/`` (class-id PNGs)
=========== ================================ =====================================================

Nothing is written when an argument is wrong: an existing non-empty ``out_dir`` is refused unless
``overwrite``, and even then unless it is an earlier export (it holds the :data:`MANIFEST` every
export writes first) that holds none of the dataset's own media; so is a path outside
``allowed_root`` when one is given.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import cv2
import fiftyone as fo
import fiftyone.core.utils as fou
import fiftyone.utils.coco as fouc
import fiftyone.utils.random as four
import fiftyone.utils.yolo as fouy
import numpy as np
from fiftyone.core.collections import SampleCollection

from ..common import DEFAULT_SPLIT, ProgressFn
from ..errors import DatasetError, DiffuGenError, OutputPathError
from ..store.dataset import check_label_field, now_iso
from ..store.repair import media_paths

FORMATS = ("yolo", "coco", "masks")
MANIFEST = ".diffugen-export.json"  # marks a folder as an export, the only kind --overwrite may delete
_TOLERANCE_PX = 1.0  # polygon simplification of instance masks, in mask pixels
FIELD_TYPES = {
    "yolo": (fo.Detections, fo.Polylines),
    "coco": (fo.Detections, fo.Polylines),
    "masks": (fo.Segmentation, fo.Detections, fo.Polylines),
}


@dataclass
class ExportSummary:
    out_dir: Path
    format: str
    field: str
    splits: dict[str, int] = dc_field(default_factory=dict)  # samples per split
    labels: int = 0
    data_yaml: Path | None = None  # yolo: what ``ultralytics`` trains on

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "format": self.format, "field": self.field, "splits": dict(self.splits),
                "labels": self.labels, "data_yaml": str(self.data_yaml) if self.data_yaml else None}

    def __str__(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.splits.items())
        return f"exported {self.labels} {self.field} labels as {self.format} to {self.out_dir} ({parts})"


# ---- argument checks (shared with the operator and the CLI) ------------------------------------
def parse_split(text: str | dict | None) -> dict[str, float]:
    """``"train=0.8,val=0.2"`` (or a dict) → ``{"train": 0.8, "val": 0.2}``, checked."""
    if text is None or text == "":
        text = DEFAULT_SPLIT
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in str(text).split(","):
            name, sep, frac = part.partition("=")
            if not sep:
                raise DiffuGenError(f"split: expected name=fraction pairs like 'train=0.8,val=0.2', got {text!r}")
            try:
                items.append((name.strip(), float(frac)))
            except ValueError:
                raise DiffuGenError(f"split: {frac.strip()!r} is not a number (in {text!r})") from None
    out: dict[str, float] = {}
    for name, frac in items:
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise DiffuGenError(f"split: names must be letters, digits, '-' or '_', got {name!r}")
        if name in out:
            raise DiffuGenError(f"split: {name!r} given twice")
        if not isinstance(frac, (int, float)) or not math.isfinite(frac) or frac <= 0:
            raise DiffuGenError(f"split: the fraction of {name!r} must be a positive number, got {frac!r}")
        out[name] = float(frac)
    if not out:
        raise DiffuGenError("split: give at least one split, e.g. 'train=0.8,val=0.2'")
    return out


def check_out_dir(out_dir: str | Path, overwrite: bool = False, allowed_root: str | Path | None = None,
                  media: list[str] | None = None) -> Path:
    """The resolved output folder, or a :class:`DiffuGenError` saying why it cannot be used.

    A relative ``out_dir`` is taken relative to ``allowed_root`` when one is given.
    """
    path = Path(out_dir).expanduser()
    if allowed_root is not None:
        root = Path(allowed_root).expanduser().resolve()
        path = (root / path).resolve() if not path.is_absolute() else path.resolve()
        if path == root or root not in path.parents:
            raise OutputPathError(f"export folder {path} is outside the allowed export root {root}: "
                                f"choose a folder inside it (a relative path is taken relative to it)")
    else:
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"export folder {path} exists and is a file")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputPathError(f"export folder {path} already exists and is not empty: "
                                f"choose another folder or overwrite it (--overwrite)")
        if path == Path(path.anchor) or path == Path.home().resolve() or path in Path.cwd().resolve().parents \
                or path == Path.cwd().resolve():
            raise OutputPathError(f"refusing to overwrite {path}: choose a dedicated export folder")
        inside = next((m for m in media or () if path in Path(m).resolve().parents), None)
        if inside is not None:
            raise OutputPathError(f"refusing to overwrite {path}: it holds the dataset's media ({inside})")
        if not (path / MANIFEST).is_file():
            raise OutputPathError(f"refusing to overwrite {path}: it is not an earlier DiffuGen export (no {MANIFEST}); "
                                  f"--overwrite only replaces those: choose another folder or empty it yourself")
    return path


def default_label_field(collection: SampleCollection, fallback: str = "daam_detections") -> str:
    """What to export or train on when no field is named: ``curated`` once a review was applied
    (the field exists), else the DAAM labels (``fallback``)."""
    return "curated" if "curated" in collection.get_field_schema() else fallback


def classes_of(collection: SampleCollection, field: str) -> list[str]:
    """Class list: the dataset's DAAM mask targets in id order, then any other label of ``field``."""
    ds = collection._root_dataset
    targets = ds.mask_targets.get("daam_segmentation") or ds.mask_targets.get(field) or ds.default_mask_targets or {}
    classes = [targets[k] for k in sorted(targets, key=int)]
    doc_type = collection.get_field_schema()[field].document_type
    if issubclass(doc_type, (fo.Detections, fo.Polylines)):
        list_name = "detections" if issubclass(doc_type, fo.Detections) else "polylines"
        classes += sorted(c for c in collection.distinct(f"{field}.{list_name}.label") if c not in classes)
    return classes


def default_export_root(dataset: fo.Dataset) -> Path | None:
    """Where the App may export a dataset: ``$DIFFUGEN_EXPORT_ROOT``, else the dataset's generation output root.

    The output root is the config's ``output_root`` when absolute, else found from the media paths
    (``<output_root>/<dataset_name>/<task>/images/<file>``). ``None`` when neither is known.
    """
    env = os.environ.get("DIFFUGEN_EXPORT_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    cfg = dataset.info.get("diffugen_config") or {}
    root = cfg.get("output_root")
    if root and Path(root).is_absolute():
        return Path(root).resolve()
    first = dataset.limit(1).values("filepath")
    name = cfg.get("dataset_name", dataset.name)
    for parent in Path(first[0]).resolve().parents if first else ():
        if parent.name == name:
            return parent.parent
    return None


# ---- export --------------------------------------------------------------------------------------
def export_dataset(collection: SampleCollection, out_dir: str | Path, format: str = "yolo", field: str = "curated",
                   split: dict[str, float] | str | None = None, seed: int = 0, overwrite: bool = False,
                   allowed_root: str | Path | None = None, progress: ProgressFn | None = None) -> ExportSummary:
    """Split ``collection`` and write ``field`` in ``format`` under ``out_dir``.

    Args:
        collection: a dataset or view.
        out_dir: the export folder (created; an existing non-empty one needs ``overwrite``).
        format: ``"yolo"``, ``"coco"`` or ``"masks"``.
        field: the label field (``Detections`` with masks, ``Polylines``; ``masks`` also takes a
            ``Segmentation``).
        split: fractions per split name, e.g. ``{"train": 0.8, "val": 0.2}`` or ``"train=0.8,val=0.2"``;
            normalised to sum 1. Each sample gets its split as a tag (old tags of these names are replaced).
        seed: seed of the random split.
        overwrite: replace an existing non-empty ``out_dir``.
        allowed_root: when given, ``out_dir`` must be inside it.
        progress: ``(done, total, message)`` callback.
    """
    if format not in FORMATS:
        raise DiffuGenError(f"format must be one of {list(FORMATS)}, got {format!r}")
    doc_type = check_label_field(collection, field, FIELD_TYPES[format], f"exported as {format}")
    splits = parse_split(split)
    total = len(collection)
    if total == 0:
        raise DatasetError("nothing to export: the collection is empty")
    media = media_paths(collection._root_dataset) if overwrite else None
    out = check_out_dir(out_dir, overwrite, allowed_root, media)
    classes = classes_of(collection, field)

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MANIFEST).write_text(json.dumps({"dataset": collection._root_dataset.name, "format": format,
                                            "field": field, "split": splits, "seed": seed, "at": now_iso()}))
    collection.untag_samples(list(splits))
    four.random_split(collection, splits, seed=seed)

    summary = ExportSummary(out, format, field)
    done = 0
    for name in splits:
        view = collection.match_tags(name)
        n = len(view)
        summary.splits[name] = n
        if n == 0:
            continue
        base = done
        cb = None
        if progress is not None:
            cb = fo.report_progress(lambda pb, base=base, name=name: progress(base + (pb.iteration or 0), total,
                                                                            f"export {name}: {base + (pb.iteration or 0)}/{total}"),
                                    dt=0.5)
        _export_split(view, out, format, field, doc_type, name, classes, cb)
        done += n
        if progress is not None:
            progress(done, total, f"exported {name}")
    summary.labels = _count_labels(collection, field, doc_type)
    if format == "yolo":
        summary.data_yaml = out / "dataset.yaml"
    return summary


def _export_split(view, out: Path, fmt: str, field: str, doc_type: type, name: str, classes: list[str], progress) -> None:
    if fmt == "masks":
        targets = None if issubclass(doc_type, fo.Segmentation) else {i + 1: c for i, c in enumerate(classes)}
        view.select_fields(field).export(
            export_dir=str(out / name), dataset_type=fo.types.ImageSegmentationDirectory, label_field=field,
            mask_targets=targets, export_media=True, progress=progress if progress is not None else False)
        return
    # YOLO and COCO: read the labels in bulk (raw documents, no per-sample objects), turn each object
    # into a polygon and hand it to FiftyOne's own exporter, as ``view.export`` would.
    if fmt == "yolo":
        exporter = fouy.YOLOv5DatasetExporter(export_dir=str(out), split=name, classes=classes, export_media=True)
    else:
        exporter = fouc.COCODetectionDatasetExporter(export_dir=str(out / name), classes=classes, export_media=True)
    list_name = "detections" if issubclass(doc_type, fo.Detections) else "polylines"
    view.exists("metadata", False).compute_metadata()
    paths, widths, heights, labels = view.values(
        ["filepath", "metadata.width", "metadata.height", f"{field}.{list_name}"], _raw=True)
    with fou.ProgressBar(total=len(paths), progress=progress if progress is not None else False) as pb:
        with exporter:
            exporter.log_collection(view)
            for path, width, height, objects in pb(zip(paths, widths, heights, labels)):
                polylines = fo.Polylines(polylines=[_to_polyline(o, width, height) for o in objects or ()])
                exporter.export_sample(path, polylines, metadata=fo.ImageMetadata(width=width, height=height))


def _to_polyline(obj: dict, width: int, height: int) -> fo.Polyline:
    """A raw ``Detection`` (mask → outer contour, else its box) or ``Polyline`` document → ``fo.Polyline``."""
    if obj.get("_cls") == "Polyline":
        points = obj.get("points") or []
    else:
        x, y, w, h = obj["bounding_box"]
        mask = obj.get("mask")
        points = []
        if mask is not None:
            mask = fou.deserialize_numpy_array(mask) if isinstance(mask, bytes) else np.asarray(mask)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            mh, mw = mask.shape[:2]
            for c in contours:
                c = cv2.approxPolyDP(c, _TOLERANCE_PX, True)[:, 0, :].astype(np.float64)
                if len(c) >= 3:  # pixel indices → image-relative coordinates
                    points.append(list(zip(x + c[:, 0] / mw * w, y + c[:, 1] / mh * h)))
        if not points:  # no mask (or one too small for a polygon): the box
            points = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)]]
    return fo.Polyline(label=obj.get("label"), points=points, closed=True, filled=True,
                       confidence=obj.get("confidence"))


def _count_labels(collection: SampleCollection, field: str, doc_type: type) -> int:
    if issubclass(doc_type, fo.Detections):
        return collection.count(f"{field}.detections")
    if issubclass(doc_type, fo.Polylines):
        return collection.count(f"{field}.polylines")
    return collection.count(field)
