"""``diffugen review`` / ``apply-review`` (the review queue and its decisions), ``diffugen train``
(bootstrap a YOLO-seg) and ``diffugen export``."""

from __future__ import annotations

import argparse

from ..common import DEFAULT_SPLIT, REVIEW_MIN_SCORE, YOLO_START_MODEL
from ._shared import device, load_dataset, positive_int


def cmd_review(args: argparse.Namespace) -> int:
    from ..curation.review import REVIEW_VIEW, build_review_queue

    n = build_review_queue(load_dataset(args.dataset), field=args.field, min_score=args.min_score,
                           include_unmatched=not args.scores_only)
    print(f"{n} labels of {args.field} need review: saved view {REVIEW_VIEW!r}; tag them 'approved' or "
          f"'rejected' in the App (diffugen app {args.dataset}), then run diffugen apply-review {args.dataset}")
    return 0


def cmd_apply_review(args: argparse.Namespace) -> int:
    from ..curation.review import CURATED, apply_review

    summary = apply_review(load_dataset(args.dataset), field=args.field, min_score=args.min_score,
                           reviewer=args.reviewer)
    print(f"{CURATED}: {summary.labels} labels on {summary.samples} samples ({summary.approved} approved, "
          f"{summary.rejected} rejected); train on them: diffugen train {args.dataset} --field {CURATED}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..curation.bootstrap import train_yolo

    ds = load_dataset(args.dataset)
    weights = train_yolo(ds, epochs=args.epochs, imgsz=args.imgsz, model=args.model, min_score=args.min_score,
                         only_approved=args.only_approved, field=args.field, device=args.device, batch=args.batch,
                         val_fraction=args.val_fraction, seed=args.seed, out_dir=args.out,
                         trust_weights=args.trust_weights)
    print(weights)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..curation.export import default_label_field, export_dataset

    ds = load_dataset(args.dataset)
    field = args.field
    if field is None:
        field = default_label_field(ds)
        why = "the review was applied" if field == "curated" else "no review applied yet (apply-review makes curated)"
        print(f"exporting {field}: {why}")
    summary = export_dataset(ds, args.out, format=args.format, field=field,
                             split=args.split, seed=args.seed, overwrite=args.overwrite)
    print(summary)
    if summary.data_yaml:
        print(f"train on it: yolo segment train data={summary.data_yaml}")
    return 0


def add_parsers(sub) -> None:
    from ..curation.export import FORMATS

    rv = sub.add_parser("review", help="queue the doubtful labels (low score, unmatched) for review in the App")
    rv.add_argument("dataset")
    rv.add_argument("--field", default="daam_detections", help="label field to review (default: %(default)s)")
    rv.add_argument("--min-score", type=float, default=REVIEW_MIN_SCORE,
                    help="labels scored below this need review (default: %(default)s)")
    rv.add_argument("--scores-only", action="store_true", help="leave out labels compare found unmatched")
    rv.set_defaults(func=cmd_review)

    ar = sub.add_parser("apply-review", help="write 'curated' from the review's approved/rejected tags and the scores")
    ar.add_argument("dataset")
    ar.add_argument("--field", default="daam_detections", help="source Detections field (default: %(default)s)")
    ar.add_argument("--min-score", type=float, default=REVIEW_MIN_SCORE,
                    help="unreviewed labels below this are left out (default: %(default)s)")
    ar.add_argument("--reviewer", help="recorded in dataset.info['diffugen_reviews'] (default: the login name)")
    ar.set_defaults(func=cmd_apply_review)

    t = sub.add_parser("train", help="train a YOLO-seg model on the DAAM or curated labels (prints the weights path last)")
    t.add_argument("dataset")
    t.add_argument("--field", default="daam_polygons",
                   help="labels to train on: daam_polygons, daam_detections, curated (after apply_review) ... "
                        "(default: %(default)s)")
    t.add_argument("--epochs", type=positive_int, default=30)
    t.add_argument("--imgsz", type=positive_int, help="training image size (default: the images' size)")
    t.add_argument("--model", default=YOLO_START_MODEL, help="a YOLO-seg yaml (from scratch) or local .pt (fine-tune)")
    t.add_argument("--min-score", type=float, help="use only labels with at least this score")
    t.add_argument("--only-approved", action="store_true", help="use only labels tagged 'approved' in review")
    t.add_argument("--device", type=device, default="cpu", help="cpu, 0, cuda:0 ...")
    t.add_argument("--batch", type=positive_int, default=16)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="run folder (default: OUTPUT_ROOT/DATASET/yolo/<time>)")
    t.add_argument("--trust-weights", action="store_true",
                   help="load a --model .pt even if ultralytics' safe load refuses it (it is a pickle: it can run code)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export labels for training: YOLO, COCO or mask images, split train/val")
    e.add_argument("dataset")
    e.add_argument("--format", choices=FORMATS, required=True)
    e.add_argument("--out", required=True, help="export folder (refused if it exists, unless --overwrite)")
    e.add_argument("--split", default=DEFAULT_SPLIT, help="split fractions (default: %(default)s)")
    e.add_argument("--field", help="label field to export (default: curated once a review was applied, "
                                   "else daam_detections)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random split (default: %(default)s)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    e.set_defaults(func=cmd_export)
