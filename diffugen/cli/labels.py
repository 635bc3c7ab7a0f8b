"""``diffugen relabel``, ``diffugen label`` (YOLO) and ``diffugen compare``."""

from __future__ import annotations

import argparse

from ..errors import DiffuGenError
from ._shared import device, load_dataset, positive_int


def _label_params(args: argparse.Namespace):
    from pydantic import ValidationError

    from ..config import format_validation_error
    from ..labels.daam import LabelParams

    given = {k: getattr(args, k) for k in ("erode", "dilate", "min_area", "polygon_epsilon") if getattr(args, k) is not None}
    if args.threshold is not None:
        given["threshold"] = args.threshold if args.threshold == "otsu" else _float(args.threshold, "--threshold")
    try:
        return LabelParams(**given)
    except ValidationError as err:
        raise DiffuGenError(format_validation_error(err, "label parameters")) from None


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DiffuGenError(f"{flag}: expected 'otsu' or a number in (0, 1), got {text!r}") from None


def cmd_relabel(args: argparse.Namespace) -> int:
    from ..labels.relabel import relabel

    params = _label_params(args)
    n = relabel(load_dataset(args.dataset), params)
    print(f"relabeled {n} samples of {args.dataset!r} with {params.model_dump()}")
    return 0


def _class_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise DiffuGenError(f"--class-map: expected dataset_class=model_class,... (e.g. sedan=car,pickup=truck), got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def cmd_label(args: argparse.Namespace) -> int:
    from ..labels.yolo import label_yolo

    ds = load_dataset(args.dataset)
    class_map = _class_map(args.class_map)
    if class_map is None:
        lm = ds.info.get("diffugen_config", {}).get("label_model") or {}
        class_map = lm.get("class_map") or None
    n = label_yolo(ds, args.yolo, class_map=class_map, conf=args.conf, imgsz=args.imgsz, device=args.device,
                   batch_size=args.batch_size, trust_weights=args.trust_weights)
    print(f"labeled {n} samples of {args.dataset!r} with {args.yolo} (fields yolo_segmentation, yolo_polygons, yolo_detections)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..labels.compare import DISAGREEMENT_VIEW, LOW_SCORE_VIEW, compare_labels

    ds = load_dataset(args.dataset)
    summary = compare_labels(ds, iou_threshold=args.iou, gt=args.gt, agreement_threshold=args.agreement,
                             min_score=args.min_score)
    print(f"{summary['samples']} samples, mean agreement {summary['mean_agreement']:.3f}; "
          f"evaluation under eval key {summary.get('eval_key')!r}; saved views {DISAGREEMENT_VIEW!r}, {LOW_SCORE_VIEW!r}")
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("relabel", help="recompute DAAM labels from stored heatmaps with new parameters")
    r.add_argument("dataset")
    r.add_argument("--threshold", help="'otsu' (default) or a fixed value in (0, 1)")
    r.add_argument("--erode", type=float, help="erosion kernel, fraction of min(width, height)")
    r.add_argument("--dilate", type=float, help="dilation kernel, fraction of min(width, height)")
    r.add_argument("--min-area", type=float, help="drop instances smaller than this fraction of the image")
    r.add_argument("--polygon-epsilon", type=float, help="polygon simplification, fraction of the perimeter")
    r.set_defaults(func=cmd_relabel)

    lb = sub.add_parser("label", help="supervised labels with a YOLO segmentation model")
    lb.add_argument("dataset")
    lb.add_argument("--yolo", required=True, metavar="WEIGHTS", help="a local YOLO-seg .pt file (never downloaded)")
    lb.add_argument("--class-map", help="dataset_class=model_class,... (default: the config's, else same names)")
    lb.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    lb.add_argument("--imgsz", type=positive_int, default=640)
    lb.add_argument("--device", type=device, default="cpu", help="cpu, 0, cuda:0 ...")
    lb.add_argument("--batch-size", type=positive_int, default=8)
    lb.add_argument("--trust-weights", action="store_true",
                    help="load the .pt even if ultralytics' safe load refuses it (it is a pickle: it can run code)")
    lb.set_defaults(func=cmd_label)

    c = sub.add_parser("compare", help="match DAAM and YOLO labels, evaluate, save disagreement views")
    c.add_argument("dataset")
    c.add_argument("--iou", type=float, default=0.5, help="IoU for a match (default 0.5)")
    c.add_argument("--gt", choices=("yolo", "daam"), default="yolo", help="ground truth for evaluate_detections")
    c.add_argument("--agreement", type=float, default=0.5, help="disagreement view: agreement below this")
    c.add_argument("--min-score", type=float, default=0.5, help="low-score view: DAAM labels below this")
    c.set_defaults(func=cmd_compare)
