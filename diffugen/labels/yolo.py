"""Supervised labels from an ultralytics YOLO segmentation model (paper sec. 3.6).

Results are converted with FiftyOne's own ``fiftyone.utils.ultralytics`` (``to_instances``,
``to_polylines``); we only rename the model's classes to dataset classes and paint the semantic
mask. We run ``YOLO.predict`` ourselves instead of ``apply_model`` because the same batched call
serves labeling during generation (images in memory, before their samples exist) and afterwards.

Fields: ``yolo_segmentation`` (``fo.Segmentation``, the DAAM mask targets), ``yolo_polygons``
(``fo.Polylines``) and ``yolo_detections`` (``fo.Detections`` with instance masks), each label's
``confidence`` being the model's score and its ``label`` a dataset class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import fiftyone as fo
import numpy as np
from fiftyone.core.collections import SampleCollection

from ..common import ProgressFn, report
from ..errors import DatasetError, DiffuGenError, ModelNotFoundError
from ..store.dataset import class_ids as get_class_ids
from ..store.files import write_png

logger = logging.getLogger(__name__)

YOLO_FIELDS = ("yolo_segmentation", "yolo_polygons", "yolo_detections")


def check_weights(weights: str | Path) -> Path:
    """The weights file, or a clear error: ultralytics would try to download an absent known name."""
    path = Path(weights).expanduser()
    if path.suffix.lower() != ".pt":
        raise ModelNotFoundError(f"YOLO weights must be a .pt file (a trained segmentation model); got {weights!s}")
    if not path.is_file():
        raise ModelNotFoundError(
            f"YOLO weights not found: {path.resolve()}. DiffuGen never downloads weights: put the file there "
            f"(e.g. yolov8l-seg.pt from ultralytics' releases) or train one with `diffugen train DATASET`."
        )
    return path


def check_pickle_safe(weights: str | Path) -> None:
    """Refuse a ``.pt`` file whose pickle would run code: it must load with ultralytics' safe mode
    (``torch.load(weights_only=True)`` against its allow-list of model classes).

    A ``.pt`` file is a pickle, and unpickling can call anything (``os.system`` included); ultralytics
    loads checkpoints with ``weights_only=False``. Every real ultralytics checkpoint passes; a file you
    trust that does not (custom layers) can be loaded with ``trust_weights`` (``--trust-weights``).
    """
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(weights).expanduser()
    try:
        torch_safe_load(str(path), safe_only=True)
    except Exception as err:  # noqa: BLE001 - ultralytics/torch raise several types for one condition
        reason = " ".join(str(err).replace("ERROR ❌️", "").split())[:300]
        raise ModelNotFoundError(
            f"{path}: refused: not a checkpoint ultralytics loads safely ({type(err).__name__}: {reason}). A .pt "
            f"file is a pickle that can run code; if you trust this one, pass --trust-weights "
            f"(config: label_model.trust_weights: true)"
        ) from None


def load_yolo(weights: str | Path, trust_weights: bool = False):
    """Load a YOLO segmentation model from a local ``.pt`` file (no download attempt).

    Unless ``trust_weights``, the file is checked first with :func:`check_pickle_safe`.
    """
    from ultralytics import YOLO

    path = check_weights(weights)
    if not trust_weights:
        check_pickle_safe(path)
    model = YOLO(str(path))
    if model.task != "segment":
        raise ModelNotFoundError(f"{weights} is a YOLO {model.task!r} model; DiffuGen needs a segmentation ('-seg') model")
    return model


def check_class_names(classes: str | Path | Sequence[str], model_names: Sequence[str], weights: str | Path) -> None:
    """The original's ``label_model.classes`` (a class-names file, one per line, or a list) must be
    the names the weights carry, in order: labels named from another list would be wrong silently."""
    if isinstance(classes, (str, Path)):
        path = Path(classes).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"label_model.classes: class-names file not found: {path.resolve()}")
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ModelNotFoundError(f"label_model.classes: {path} is not a UTF-8 text file of class names") from None
    else:
        names = list(classes)
    if names != list(model_names):
        first = next((i for i, (a, b) in enumerate(zip(names, model_names)) if a != b), min(len(names), len(model_names)))
        raise ModelNotFoundError(
            f"label_model.classes lists {len(names)} names but {weights} has {len(model_names)}; they differ "
            f"from position {first} ({names[first:first + 3]} vs {list(model_names)[first:first + 3]})"
        )


def resolve_class_map(model_names: Sequence[str], dataset_classes: Sequence[str],
                      class_map: dict[str, str] | None) -> dict[str, list[str]]:
    """Model class → the dataset classes it stands for.

    Args:
        class_map: dataset class → model class (the original ``dataset_to_model_class_map``);
            ``None``/empty: each dataset class that the model also has maps to itself.

    Raises:
        DiffuGenError: the map names a model class the model does not have, or nothing maps.
    """
    names = set(model_names)
    if class_map:
        bad = {d: m for d, m in class_map.items() if m not in names}
        if bad:
            d, m = next(iter(bad.items()))
            raise DiffuGenError(
                f"class map {d!r} → {m!r}: the YOLO model has no class {m!r}; its classes are {sorted(names)[:20]}"
                + (" ..." if len(names) > 20 else "")
            )
        pairs = class_map.items()
    else:
        pairs = [(d, d) for d in dataset_classes if d in names]
    out: dict[str, list[str]] = {}
    for dataset_class, model_class in pairs:
        out.setdefault(model_class, []).append(dataset_class)
    if not out:
        raise DiffuGenError(
            f"none of the dataset classes {list(dataset_classes)} is a class of the YOLO model "
            f"({sorted(names)[:20]}); give a class map (dataset class → model class)"
        )
    return out


class YoloLabeler:
    """Batched YOLO-seg labeling into FiftyOne labels named by dataset class."""

    def __init__(self, weights: str | Path, dataset_classes: Sequence[str], class_map: dict[str, str] | None = None,
                 conf: float = 0.25, imgsz: int = 640, device: str = "cpu", batch_size: int = 8,
                 class_names: str | Path | Sequence[str] | None = None, trust_weights: bool = False):
        if not 0 <= conf <= 1:
            raise DiffuGenError(f"YOLO confidence threshold must be in [0, 1], got {conf}")
        self.model = load_yolo(weights, trust_weights)
        if class_names is not None:
            check_class_names(class_names, list(self.model.names.values()), weights)
        self.weights = str(weights)
        self.to_dataset = resolve_class_map(list(self.model.names.values()), dataset_classes, class_map)
        self.conf, self.imgsz, self.device, self.batch_size = conf, imgsz, device, batch_size

    def predict(self, images_bgr: Sequence[np.ndarray]) -> list:
        """ultralytics ``Results`` for BGR uint8 images ``(H, W, 3)``, in one batched call."""
        return self.model.predict(list(images_bgr), imgsz=self.imgsz, conf=self.conf, device=self.device,
                                  batch=self.batch_size, verbose=False)

    def _dataset_class(self, model_class: str, preferred: Sequence[str]) -> str:
        options = self.to_dataset[model_class]
        return next((c for c in options if c in preferred), options[0])

    def to_labels(self, result, preferred: Sequence[str], class_ids: dict[str, int], mask_path: Path) -> dict[str, fo.Label]:
        """One ``Results`` → the three YOLO fields; writes the semantic mask PNG to ``mask_path``.

        Args:
            preferred: the sample's own classes, to pick among dataset classes that share a model
                class (``sedan`` and ``suv`` both map to ``car``: a ``car`` in a sedan prompt is a sedan).
        """
        from fiftyone.utils import ultralytics as fou

        keep = list(self.to_dataset)
        dets = fou.to_instances(result, confidence_thresh=self.conf, classes=keep)
        polys = fou.to_polylines(result, confidence_thresh=self.conf, classes=keep)
        h, w = result.orig_img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for d, p in zip(dets.detections, polys.polylines):
            d.label = p.label = self._dataset_class(d.label, preferred)
        # Paint low confidence first, so where instances overlap the surer one wins.
        for d in sorted(dets.detections, key=lambda d: d.confidence):
            x, y, bw, bh = d.bounding_box
            x0, y0 = int(x * w), int(y * h)  # as to_instances crops the mask
            sub = d.mask[: max(0, h - y0), : max(0, w - x0)]
            region = mask[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]]
            region[sub] = class_ids.get(d.label, 0)
        write_png(mask_path, mask)
        return {"yolo_segmentation": fo.Segmentation(mask_path=str(mask_path)), "yolo_polygons": polys,
                "yolo_detections": dets}

    def label(self, images_bgr: Sequence[np.ndarray], preferred: Sequence[Sequence[str]], class_ids: dict[str, int],
              mask_paths: Sequence[Path]) -> list[dict[str, fo.Label]]:
        results = self.predict(images_bgr)
        return [self.to_labels(r, p, class_ids, m) for r, p, m in zip(results, preferred, mask_paths)]


def _sample_classes(word_heatmaps) -> list[str]:
    return [h["label"] for h in word_heatmaps or []]


def label_yolo(collection: SampleCollection, weights: str | Path, class_map: dict[str, str] | None = None, conf: float = 0.25,
               imgsz: int = 640, device: str = "cpu", batch_size: int = 8,
               progress: ProgressFn | None = None, trust_weights: bool = False) -> int:
    """Label every sample of ``collection`` (a dataset or view) with a YOLO-seg model. Returns the count.

    Everything is checked before any label is written: the weights exist, the class map fits the
    model, the collection is not empty.
    """
    from tqdm.auto import tqdm

    ds = collection._dataset
    total = len(collection)
    if total == 0:
        raise DatasetError(f"nothing to label: the view of {ds.name!r} is empty")
    classes = list(ds.mask_targets.get("daam_segmentation", {}).values()) or list(
        (class_map or {}).keys())
    labeler = YoloLabeler(weights, classes, class_map, conf, imgsz, device, batch_size, trust_weights=trust_weights)
    if "yolo_segmentation" not in ds.mask_targets and "daam_segmentation" in ds.mask_targets:
        ds.mask_targets = {**ds.mask_targets, "yolo_segmentation": ds.mask_targets["daam_segmentation"]}
        ds.save()
    ids_map = get_class_ids(ds)
    ids = collection.values("id")
    paths = collection.values("filepath")
    heatmaps = collection.values("word_heatmaps") if "word_heatmaps" in ds.get_field_schema() else [None] * total
    done = 0
    bar = tqdm(total=total, desc="YOLO labels", unit="img")
    for start in range(0, total, batch_size):
        chunk = slice(start, start + batch_size)
        images = []
        for p in paths[chunk]:
            img = cv2.imread(p, cv2.IMREAD_COLOR)
            if img is None:
                raise DiffuGenError(f"image file missing or unreadable: {p}")
            images.append(img)
        masks = [Path(p).parent.parent / "masks_yolo" / f"{Path(p).stem}.png" for p in paths[chunk]]
        fields = labeler.label(images, [_sample_classes(h) for h in heatmaps[chunk]], ids_map, masks)
        for name in YOLO_FIELDS:
            collection._dataset.set_values(name, {i: f[name] for i, f in zip(ids[chunk], fields)}, key_field="id")
        done += len(images)
        bar.update(len(images))
        report(progress, done, total, f"YOLO labels {done}/{total}")
    bar.close()
    ds.info["diffugen_yolo_labels"] = {"weights": str(weights), "conf": conf, "imgsz": imgsz, "class_map": class_map or {}}
    ds.save()
    return done
