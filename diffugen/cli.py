"""The ``diffugen`` command line: ``generate``, ``relabel``, ``app``."""

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

    cfg = load_config(args.config)
    if args.dataset:
        cfg = cfg.model_copy(update={"dataset_name": args.dataset})
    summary = generate(cfg, tasks=[args.task] if args.task else None, output_root=args.output_root)
    print(summary)
    print(f"open it in the FiftyOne App: diffugen app {cfg.dataset_name}")
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from .relabel import relabel

    params = _label_params(args)
    if not fo.dataset_exists(args.dataset):
        raise DiffuGenError(f"no FiftyOne dataset named {args.dataset!r}; datasets here: {fo.list_datasets()}")
    n = relabel(fo.load_dataset(args.dataset), params)
    print(f"relabeled {n} samples of {args.dataset!r} with {params.model_dump()}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        raise DiffuGenError(f"no FiftyOne dataset named {args.dataset!r}; datasets here: {fo.list_datasets()}")
    session = fo.launch_app(fo.load_dataset(args.dataset), port=args.port, remote=args.remote)
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
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("relabel", help="recompute DAAM labels from stored heatmaps with new parameters")
    r.add_argument("dataset")
    r.add_argument("--threshold", help="'otsu' (default) or a fixed value in (0, 1)")
    r.add_argument("--erode", type=float, help="erosion kernel, fraction of min(width, height)")
    r.add_argument("--dilate", type=float, help="dilation kernel, fraction of min(width, height)")
    r.add_argument("--min-area", type=float, help="drop instances smaller than this fraction of the image")
    r.add_argument("--polygon-epsilon", type=float, help="polygon simplification, fraction of the perimeter")
    r.set_defaults(func=cmd_relabel)

    a = sub.add_parser("app", help="open a dataset in the FiftyOne App")
    a.add_argument("dataset")
    a.add_argument("--port", type=int, default=5151)
    a.add_argument("--remote", action="store_true", help="serve without opening a browser")
    a.set_defaults(func=cmd_app)
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
