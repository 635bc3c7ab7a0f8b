"""Bootstrap a supervised model from unsupervised labels (paper sec. 3.6 / 4.2).

DAAM polygons (optionally only those above a score, or approved in review) are exported with
FiftyOne's YOLOv5 exporter into the ultralytics segmentation format with a deterministic
train/val split, and an ultralytics YOLO-seg model is trained on them. The run's metrics and
weights path are kept in ``dataset.info["diffugen_yolo_runs"]``; the weights label right away
with :func:`diffugen.labels.supervised.label_yolo`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from pathlib import Path
from typing import Callable

import fiftyone as fo
from fiftyone import ViewField as F

from .errors import DiffuGenError, ModelNotFoundError

logger = logging.getLogger(__name__)


def split_of(key: str, val_fraction: float, seed: int = 0) -> str:
    """``"val"`` or ``"train"`` from a hash of the sample key: stable as the dataset grows."""
    h = int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def export_for_yolo(collection, out_dir: Path, field: str = "daam_polygons", min_score: float | None = None,
                    only_approved: bool = False, val_fraction: float = 0.2, seed: int = 0) -> tuple[Path, dict]:
    """Write ``collection``'s ``field`` labels as an ultralytics segmentation dataset.

    Returns:
        The ``dataset.yaml`` path and counts ``{"train": n, "val": n, "labels": n}``.
    """
    view = collection
    if min_score is not None:
        view = view.filter_labels(field, F("confidence") >= min_score, only_matches=False)
    if only_approved:
        view = view.filter_labels(field, F("tags").contains("approved"), only_matches=False)
    classes = list(collection._dataset.mask_targets.get("daam_segmentation", {}).values())
    if not classes:
        classes = sorted(view.distinct(f"{field}.polylines.label"))
    keys = view.values("key") if "key" in view.get_field_schema() else view.values("id")
    ids = view.values("id")
    splits = {"train": [], "val": []}
    for i, k in zip(ids, keys):
        splits[split_of(k or i, val_fraction, seed)].append(i)
    if not splits["val"] and len(splits["train"]) > 1:
        splits["val"].append(splits["train"].pop())  # ultralytics needs a validation image
    if not splits["train"]:
        raise DiffuGenError("nothing to train on: the view has no samples (or all went to validation)")
    yaml_path = out_dir / "dataset.yaml"
    for split, split_ids in splits.items():
        view.select(split_ids).export(
            export_dir=str(out_dir), dataset_type=fo.types.YOLOv5Dataset, label_field=field, split=split,
            classes=classes, yaml_path=str(yaml_path), progress=False,
        )
    n_labels = view.count(f"{field}.polylines")
    if n_labels == 0:
        raise DiffuGenError(f"no {field} labels to train on (min_score={min_score}, only_approved={only_approved})")
    return yaml_path, {"train": len(splits["train"]), "val": len(splits["val"]), "labels": n_labels}


def _check_model(model: str) -> None:
    if model.endswith(".pt") and not Path(model).expanduser().is_file():
        raise ModelNotFoundError(
            f"YOLO starting weights not found: {Path(model).resolve()} (DiffuGen never downloads weights); "
            "use a model yaml such as yolov8n-seg.yaml to train from scratch"
        )
    if not model.endswith((".pt", ".yaml", ".yml")):
        raise DiffuGenError(f"--model must be a YOLO-seg .yaml (from scratch) or .pt (fine-tune), got {model!r}")


def train_yolo(collection, epochs: int = 30, imgsz: int | None = None, model: str = "yolov8n-seg.yaml",
               min_score: float | None = None, only_approved: bool = False, field: str = "daam_polygons",
               device: str = "cpu", batch: int = 16, val_fraction: float = 0.2, seed: int = 0,
               out_dir: str | Path | None = None, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Train a YOLO-seg model on ``collection``'s DAAM labels; returns the best weights' path."""
    from ultralytics import YOLO

    _check_model(model)
    if epochs < 1:
        raise DiffuGenError(f"epochs must be >= 1, got {epochs}")
    ds = collection._dataset
    if len(collection) == 0:
        raise DiffuGenError(f"nothing to train on: the view of {ds.name!r} is empty")
    if imgsz is None:
        side = max(collection.bounds("metadata.width")[1] or 640, collection.bounds("metadata.height")[1] or 640)
        imgsz = int(32 * round(side / 32)) or 32
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(ds.info.get("diffugen_config", {}).get("output_root", "runs"))
    run_dir = Path(out_dir) if out_dir else root / ds.name / "yolo" / stamp
    yaml_path, counts = export_for_yolo(collection, run_dir / "data", field, min_score, only_approved, val_fraction, seed)
    yolo = YOLO(model)
    if progress is not None:
        yolo.add_callback("on_train_epoch_end", lambda t: progress(t.epoch + 1, epochs, f"epoch {t.epoch + 1}/{epochs}"))
    results = yolo.train(
        data=str(yaml_path), epochs=epochs, imgsz=imgsz, device=device, batch=batch, workers=0, plots=False,
        project=str(run_dir.resolve()), name="train", exist_ok=True, seed=seed, deterministic=True, verbose=False,
        amp=False,
    )
    trainer = yolo.trainer
    weights = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    metrics = {k: float(v) for k, v in (getattr(results, "results_dict", None) or {}).items()}
    runs = list(ds.info.get("diffugen_yolo_runs", []))
    runs.append({"weights": str(weights.resolve()), "model": model, "epochs": epochs, "imgsz": imgsz,
                 "field": field, "min_score": min_score, "only_approved": only_approved, "counts": counts,
                 "metrics": metrics, "date": stamp})
    ds.info["diffugen_yolo_runs"] = runs
    ds.save()
    return weights.resolve()
