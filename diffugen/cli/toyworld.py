"""``diffugen toyworld ...``: train the toy-world model, or render sample scenes.

    diffugen toyworld train --out diffugen/toyworld/model --steps 1500 [--resume]
    diffugen toyworld scenes OUT_DIR [--count 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from ..toyworld.train import run

    return run(args)


def cmd_scenes(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..toyworld.scene import make_scene

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(args.seed, args.seed + args.count):
        sc = make_scene(seed, args.size)
        Image.fromarray(sc.image).save(out / f"{seed}.png")
        rows.append({"seed": seed, "caption": sc.caption, **sc.attributes,
                     "objects": [{"color": o.color, "shape": o.shape, "hollow": o.hollow, "box": list(o.box)} for o in sc.objects]})
    (out / "scenes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.count} scenes to {out}")
    return 0


def add_parsers(sub) -> None:
    """Add the ``toyworld`` command (with ``train`` and ``scenes``) to the ``diffugen`` subparsers ``sub``."""
    from ..toyworld.train import add_arguments

    p = sub.add_parser("toyworld", help="the procedural toy world: train its model, render scenes")
    tsub = p.add_subparsers(dest="toyworld_command", required=True)
    t = tsub.add_parser("train", help="train the toy-world model from scratch (CPU, resumable)")
    add_arguments(t)
    t.set_defaults(func=cmd_train)
    s = tsub.add_parser("scenes", help="render sample scenes with captions (PNG + scenes.jsonl)")
    s.add_argument("out")
    s.add_argument("--count", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64)
    s.set_defaults(func=cmd_scenes)
