"""The ``diffugen`` command line: ``generate``, ``relabel``, ``label``, ``train``, ``compare``, ``app``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import DiffuGenError

TASK_CHOICES = ("txt2img", "img2img", "inpaint")


def _label_params(args: argparse.Namespace):
    from pydantic import ValidationError

    from .config import format_validation_error
    from .labels.unsupervised import LabelParams

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


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .generate import generate

    if args.shards is not None or args.resume:
        return _generate_sharded(args)
    cfg = load_config(args.config)
    if args.dataset:
        cfg = cfg.model_copy(update={"dataset_name": args.dataset})
    summary = generate(cfg, tasks=[args.task] if args.task else None, output_root=args.output_root)
    print(summary)
    print(f"open it in the FiftyOne App: diffugen app {cfg.dataset_name}")
    return 0


def _generate_sharded(args: argparse.Namespace) -> int:
    from . import shards

    if args.dataset:
        raise DiffuGenError("--dataset cannot be combined with --shards: workers read the dataset name from the config")
    if args.resume:
        queued = shards.resume_shards(args.config, stale_after=args.stale_after)
        if not queued:
            print("nothing to resume: every shard is completed, queued or running")
            return 0
        for q in queued:
            print(f"requeued {q['task']} shard {q['index'] + 1} ({q['why']}): operation {q['id']}")
    else:
        queued = shards.queue_shards(args.config, args.shards, tasks=[args.task] if args.task else None,
                                     output_root=args.output_root)
        for q in queued:
            print(f"queued {q['task']} shard {q['index'] + 1}/{q['count']}: operation {q['id']}")
    print("start workers (one per GPU, on any machine sharing this database and media root):\n"
          "  CUDA_VISIBLE_DEVICES=0 fiftyone delegated launch\n"
          "watch them: diffugen status DATASET")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .shards import shard_status

    ds = _dataset(args.dataset)
    rows = shard_status(args.dataset, stale_after=args.stale_after)
    if not rows:
        print(f"{args.dataset!r}: no generate shards queued")
    for s in rows:
        state = f"{s.state} (STALE: {s.why_stale}; `diffugen generate CONFIG --resume` requeues it)" if s.stale else s.state
        pct = f" {100 * s.progress:.0f}%" if s.progress is not None and s.state == "running" else ""
        print(f"{s.task} shard {s.index + 1}/{s.count}: {state}{pct} {s.label}".rstrip())
    print(f"samples: {dict(ds.count_values('task'))}")
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    from .relabel import relabel

    params = _label_params(args)
    n = relabel(_dataset(args.dataset), params)
    print(f"relabeled {n} samples of {args.dataset!r} with {params.model_dump()}")
    return 0


def _dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise DiffuGenError(f"no FiftyOne dataset named {name!r}; datasets here: {fo.list_datasets()}")
    return fo.load_dataset(name)


def _class_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise DiffuGenError(f"--class-map: expected dataset_class=model_class,... (e.g. sedan=car,pickup=truck), got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def cmd_label(args: argparse.Namespace) -> int:
    from .labels.supervised import label_yolo

    ds = _dataset(args.dataset)
    class_map = _class_map(args.class_map)
    if class_map is None:
        lm = ds.info.get("diffugen_config", {}).get("label_model") or {}
        class_map = lm.get("class_map") or None
    n = label_yolo(ds, args.yolo, class_map=class_map, conf=args.conf, imgsz=args.imgsz, device=args.device,
                   batch_size=args.batch_size)
    print(f"labeled {n} samples of {args.dataset!r} with {args.yolo} (fields yolo_segmentation, yolo_polygons, yolo_detections)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_yolo

    ds = _dataset(args.dataset)
    weights = train_yolo(ds, epochs=args.epochs, imgsz=args.imgsz, model=args.model, min_score=args.min_score,
                         only_approved=args.only_approved, device=args.device, batch=args.batch,
                         val_fraction=args.val_fraction, seed=args.seed, out_dir=args.out)
    print(weights)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import DISAGREEMENT_VIEW, LOW_SCORE_VIEW, compare_labels

    ds = _dataset(args.dataset)
    summary = compare_labels(ds, iou_threshold=args.iou, gt=args.gt, agreement_threshold=args.agreement,
                             min_score=args.min_score)
    print(f"{summary['samples']} samples, mean agreement {summary['mean_agreement']:.3f}; "
          f"evaluation under eval key {summary.get('eval_key')!r}; saved views {DISAGREEMENT_VIEW!r}, {LOW_SCORE_VIEW!r}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import fiftyone as fo

    session = fo.launch_app(_dataset(args.dataset), port=args.port, remote=args.remote)
    session.wait()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffugen", description="Labeled image datasets from Stable Diffusion, in FiftyOne.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, skips)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate and label images from a JSON/YAML config (resumes if re-run)")
    g.add_argument("config", help="config file (.json, .yaml)")
    g.add_argument("--task", choices=TASK_CHOICES, help="run only this task section (default: all, in order)")
    g.add_argument("--output-root", help="folder for images, heatmaps and masks (default: the config's output_root)")
    g.add_argument("--dataset", help="dataset name (default: the config's dataset_name)")
    g.add_argument("--shards", type=int, help="queue N delegated shards per task for `fiftyone delegated launch` workers")
    g.add_argument("--resume", action="store_true", help="requeue the shards that failed or whose worker died")
    g.add_argument("--stale-after", type=float, default=600.0,
                   help="with --resume: a running shard without progress for this many seconds is dead (default 600)")
    g.set_defaults(func=cmd_generate)

    st = sub.add_parser("status", help="the generate shards of a dataset: queued, running, completed, failed")
    st.add_argument("dataset")
    st.add_argument("--stale-after", type=float, default=600.0, help="seconds without progress before a shard is stale")
    st.set_defaults(func=cmd_status)

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
    lb.add_argument("--imgsz", type=int, default=640)
    lb.add_argument("--device", default="cpu", help="cpu, 0, cuda:0 ...")
    lb.add_argument("--batch-size", type=int, default=8)
    lb.set_defaults(func=cmd_label)

    t = sub.add_parser("train", help="train a YOLO-seg model on the DAAM labels (prints the weights path last)")
    t.add_argument("dataset")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--imgsz", type=int, help="training image size (default: the images' size)")
    t.add_argument("--model", default="yolov8n-seg.yaml", help="a YOLO-seg yaml (from scratch) or local .pt (fine-tune)")
    t.add_argument("--min-score", type=float, help="use only DAAM labels with at least this score")
    t.add_argument("--only-approved", action="store_true", help="use only labels tagged 'approved' in review")
    t.add_argument("--device", default="cpu")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="run folder (default: OUTPUT_ROOT/DATASET/yolo/<time>)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("compare", help="match DAAM and YOLO labels, evaluate, save disagreement views")
    c.add_argument("dataset")
    c.add_argument("--iou", type=float, default=0.5, help="IoU for a match (default 0.5)")
    c.add_argument("--gt", choices=("yolo", "daam"), default="yolo", help="ground truth for evaluate_detections")
    c.add_argument("--agreement", type=float, default=0.5, help="disagreement view: agreement below this")
    c.add_argument("--min-score", type=float, default=0.5, help="low-score view: DAAM labels below this")
    c.set_defaults(func=cmd_compare)

    a = sub.add_parser("app", help="open a dataset in the FiftyOne App")
    a.add_argument("dataset")
    a.add_argument("--port", type=int, default=5151)
    a.add_argument("--remote", action="store_true", help="serve without opening a browser")
    a.set_defaults(func=cmd_app)

    from . import export, plugin, textual_inversion
    from .toyworld import cli as toyworld_cli

    export.add_parser(sub)
    plugin.add_parser(sub)
    toyworld_cli.add_parser(sub)
    textual_inversion.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        return args.func(args)
    except DiffuGenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: samples written so far are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
