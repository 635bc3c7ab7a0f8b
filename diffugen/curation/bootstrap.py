"""Bootstrap a supervised model from the curated or DAAM labels (paper sec. 3.6 / 4.2).

The labels (optionally only those above a score, or approved in review) go through the one
exporter, :func:`diffugen.curation.export.export_dataset` in YOLO format with a train/val split, and an
ultralytics YOLO-seg model trains on them. Any Detections (with masks) or Polylines field works:
``curated`` (what a reviewer approved), ``daam_detections``, ``daam_polygons``. The run's metrics and
weights path are kept in ``dataset.info["diffugen_yolo_runs"]``; the weights label right away with
:func:`diffugen.labels.yolo.label_yolo`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import fiftyone as fo
import yaml
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from ..common import YOLO_START_MODEL, ProgressFn
from ..errors import DatasetError, DiffuGenError, ModelNotFoundError
from ..store.dataset import LABEL_LISTS, check_label_field
from .export import export_dataset
from .review import APPROVED

logger = logging.getLogger(__name__)


def check_start_model(model: str, trust_weights: bool = False) -> None:
    """A YOLO-seg ``.yaml`` (from scratch) or an existing local ``.pt`` (fine-tune) that loads safely
    (:func:`diffugen.labels.yolo.check_pickle_safe`, unless ``trust_weights``), else a clear error."""
    if not model.endswith((".pt", ".yaml", ".yml")):
        raise DiffuGenError(f"--model must be a YOLO-seg .yaml (from scratch) or .pt (fine-tune), got {model!r}")
    if model.endswith(".pt") and not Path(model).expanduser().is_file():
        raise ModelNotFoundError(
            f"YOLO starting weights not found: {Path(model).resolve()} (DiffuGen never downloads weights); "
            f"use a model yaml such as {YOLO_START_MODEL} to train from scratch"
        )
    if model.endswith(".pt") and not trust_weights:
        from ..labels.yolo import check_pickle_safe

        check_pickle_safe(model)


def training_view(collection: SampleCollection, field: str, min_score: float | None = None, only_approved: bool = False):
    """The labels of ``field`` that training uses: scored at least ``min_score``, tagged approved if asked."""
    view = collection
    if min_score is not None:
        view = view.filter_labels(field, F("confidence") >= min_score, only_matches=False)
    if only_approved:
        view = view.filter_labels(field, F("tags").contains(APPROVED), only_matches=False)
    return view


def train_yolo(collection: SampleCollection, epochs: int = 30, imgsz: int | None = None, model: str = YOLO_START_MODEL,
               min_score: float | None = None, only_approved: bool = False, field: str = "daam_polygons",
               device: str = "cpu", batch: int = 16, val_fraction: float = 0.2, seed: int = 0,
               out_dir: str | Path | None = None, progress: ProgressFn | None = None,
               trust_weights: bool = False) -> Path:
    """Train a YOLO-seg model on ``collection``'s ``field`` labels; returns the best weights' path.

    Everything is checked before anything is written: the starting model, the epochs, the field,
    that there are samples and labels to train on.
    """
    from ultralytics import YOLO

    check_start_model(model, trust_weights)
    if epochs < 1:
        raise DiffuGenError(f"epochs must be >= 1, got {epochs}")
    if not 0.0 < val_fraction < 1.0:
        raise DiffuGenError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ds = collection._dataset
    if len(collection) == 0:
        raise DatasetError(f"nothing to train on: the view of {ds.name!r} is empty")
    kind = check_label_field(collection, field, LABEL_LISTS, "trained on")
    view = training_view(collection, field, min_score, only_approved)
    n_labels = view.count(f"{field}.{'detections' if issubclass(kind, fo.Detections) else 'polylines'}")
    if n_labels == 0:
        raise DatasetError(f"no {field} labels to train on (min_score={min_score}, only_approved={only_approved})")
    if imgsz is None:
        side = max(collection.bounds("metadata.width")[1] or 640, collection.bounds("metadata.height")[1] or 640)
        imgsz = int(32 * round(side / 32)) or 32
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(ds.info.get("diffugen_config", {}).get("output_root", "runs"))
    run_dir = Path(out_dir) if out_dir else root / ds.name / "yolo" / stamp
    exported = export_dataset(view, run_dir / "data", format="yolo", field=field,
                              split={"train": 1.0 - val_fraction, "val": val_fraction}, seed=seed, overwrite=True)
    counts = {"train": exported.splits.get("train", 0), "val": exported.splits.get("val", 0), "labels": n_labels}
    if counts["val"] == 0:  # ultralytics needs a validation image: validate on the training images
        data = yaml.safe_load(exported.data_yaml.read_text())
        data["val"] = data["train"]
        exported.data_yaml.write_text(yaml.safe_dump(data))
    yolo = YOLO(model)
    if progress is not None:
        yolo.add_callback("on_train_epoch_end", lambda t: progress(t.epoch + 1, epochs, f"epoch {t.epoch + 1}/{epochs}"))
    results = yolo.train(
        data=str(exported.data_yaml), epochs=epochs, imgsz=imgsz, device=device, batch=batch, workers=0, plots=False,
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
