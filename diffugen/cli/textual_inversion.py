"""``diffugen textual-inversion train``: learn a new token's embedding from a few images."""

from __future__ import annotations

import argparse

from ._shared import device, positive_int


def cmd_train(args: argparse.Namespace) -> int:
    from ..textual_inversion import train_textual_inversion

    result = train_textual_inversion(
        args.images, args.token, args.init_word, args.model, args.out, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, size=args.size, templates=args.template, seed=args.seed, device=args.device,
        dtype=args.dtype, checkpoint_every=args.checkpoint_every, resume=args.resume, num_vectors=args.num_vectors,
        max_norm=args.max_norm,
    )
    print(result)
    print(f"use it in a generate config: {result.config_snippet()[1:-1]}")
    print(result.path)
    return 0


def add_parsers(sub) -> None:
    """Add ``diffugen textual-inversion train`` to the CLI's subparsers (``sub`` from ``add_subparsers``)."""
    p = sub.add_parser("textual-inversion", help="learn a new token's embedding from a few images (prints its path last)")
    tsub = p.add_subparsers(dest="ti_command", required=True)
    t = tsub.add_parser("train", help="train an embedding for --token on the images of --images (resumable)")
    t.add_argument("--images", required=True, metavar="DIR", help="folder of images (+ optional metadata.jsonl captions)")
    t.add_argument("--token", required=True, help="the new token, e.g. '<my-thing>'")
    t.add_argument("--init-word", required=True, help="a one-token word close to the concept; the embedding starts there (with --num-vectors N: one word, or N words, one per vector)")
    t.add_argument("--model", required=True, help="builtin:toyworld, a diffusers folder, a checkpoint file or a hub id")
    t.add_argument("--out", required=True, metavar="FILE.safetensors", help="embedding file to write")
    t.add_argument("--steps", type=positive_int, default=500)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--size", type=int, help="image side in pixels (default: the model's native size)")
    t.add_argument("--template", action="append",
                   help="caption with {} for the token (repeatable; default: object templates)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", type=device, default="auto")
    t.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="dtype of the UNet and VAE (auto: float16 on CUDA, else float32)")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (0: none)")
    t.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.safetensors")
    t.add_argument("--num-vectors", type=positive_int, default=1, help="embedding vectors the token gets")
    t.add_argument("--max-norm", metavar="X|vocab",
                   help="keep each new vector's length at most X ('vocab': the longest word's); default: unconstrained")
    t.set_defaults(func=cmd_train)
