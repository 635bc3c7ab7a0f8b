"""``diffugen generate`` (in this process, or queued as delegated shards) and ``diffugen status``."""

from __future__ import annotations

import argparse

from ..common import STALE_AFTER_S, TASKS, dataset_name_problem
from ..errors import DiffuGenError
from ._shared import load_dataset, positive_int


def cmd_generate(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..generation.runner import generate

    if args.dataset is not None:
        problem = dataset_name_problem(args.dataset)
        if problem:
            raise DiffuGenError(f"--dataset: {problem}")
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
    from ..generation import shards

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
    from ..generation.shards import shard_status

    ds = load_dataset(args.dataset)
    rows = shard_status(args.dataset, stale_after=args.stale_after)
    if not rows:
        print(f"{args.dataset!r}: no generate shards queued")
    for s in rows:
        state = f"{s.state} (STALE: {s.why_stale}; `diffugen generate CONFIG --resume` requeues it)" if s.stale else s.state
        pct = f" {100 * s.progress:.0f}%" if s.progress is not None and s.state == "running" else ""
        print(f"{s.task} shard {s.index + 1}/{s.count}: {state}{pct} {s.label}".rstrip())
    counts = dict(ds.count_values("task")) if "task" in ds.get_field_schema() else {}
    print(f"samples: {counts or len(ds)}")
    return 0


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="generate and label images from a JSON/YAML config (resumes if re-run)")
    g.add_argument("config", help="config file (.json, .yaml)")
    g.add_argument("--task", choices=TASKS, help="run only this task section (default: all, in order)")
    g.add_argument("--output-root", help="folder for images, heatmaps and masks (default: the config's output_root)")
    g.add_argument("--dataset", help="dataset name (default: the config's dataset_name)")
    g.add_argument("--shards", type=positive_int, help="queue N delegated shards per task for `fiftyone delegated launch` workers")
    g.add_argument("--resume", action="store_true", help="requeue the shards that failed or whose worker died")
    g.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                   help="with --resume: a running shard without progress for this many seconds is dead (default %(default)s)")
    g.set_defaults(func=cmd_generate)

    st = sub.add_parser("status", help="the generate shards of a dataset: queued, running, completed, failed")
    st.add_argument("dataset")
    st.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                    help="seconds without progress before a shard is stale (default %(default)s)")
    st.set_defaults(func=cmd_status)
