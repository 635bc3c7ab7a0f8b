"""Textual inversion on the toy world (paper sec. 3.4, like its grand piano): teach ``builtin:toyworld`` a
shape it never saw, then check that prompts with the new token draw it and that DAAM labels it.

Usage (from the repository root)::

    python -m studies.textual_inversion_proof [--shape ring|star|oval] [--examples 8] [--steps 1500] [--n 100]
        [--model M] [--num-vectors N --init-word "W1 .. WN"] [--max-norm X|vocab] [--eval-seed S] [--keep] [--quick]

(``--keep`` keeps the examples, embedding and images, and lists the images in ``samples.json`` in
that folder, which :mod:`studies.eye_audit` scores against the audits by eye.)

1. **Examples**: ``--examples`` procedural scenes, each with one object of the novel shape
   (:data:`diffugen.toyworld.scene.NOVEL_SHAPES`; never in a training scene, its word not in the
   model's vocabulary), colours and backgrounds in turn, captioned like the training scenes with the
   shape word replaced by the token (``metadata.jsonl``: "a red {} on the grass").
2. **Training**: :func:`diffugen.textual_inversion.train_textual_inversion` (only the token's row trains).
3. **Generation**: ``--n`` prompts "a <colour> <token> <on background> [at time]" with held-out seeds,
   through DiffuGen's own ``generate`` with the embedding in the config (the token is a class word,
   so it gets DAAM labels). Controls, same prompts and seeds: the plain shape word (the model has no
   such token: its letters are separate tokens), the init word, and for the ring and the oval their
   descriptions in words the model knows, "hollow circle" and "wide circle" (combinations it never
   saw: only squares and triangles are hollow, or stretched in a world trained with ``--stretch-rate``).
4. **Judged from the image**: the requested colour's largest blob (truth by colour,
   :func:`~diffugen.toyworld.truth.recover_instances`) classified among every kind of object
   (:data:`~diffugen.toyworld.scene.ALL_LABELS`, :func:`~diffugen.toyworld.truth.classify_shape`);
   the **shape rate** is the fraction of prompts whose object is there and has the novel shape
   (target >= 70%). A second judge classifies the object that blob belongs to by contrast with the
   background, enclosed holes included (:func:`studies.judges.object_by_contrast`,
   :func:`studies.judges.classify_with_holes`): the token's rings drift off the palette,
   which splits them into arcs for the first judge. **DAAM mask IoU**: the labeled word's Otsu mask
   vs the colour blobs.

Numbers go to stdout and ``studies/out/textual_inversion_proof.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench._common import ROOT, colour_blobs, iou, machine_line, mark, private_database
from studies.judges import classify_with_holes, judged_kinds, object_by_contrast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_SHAPE_RATE = 0.70
MIN_AREA = 12  # pixels: smaller colour blobs are noise
EXAMPLE_SEED = 2_000_000_000  # example scenes: far from training (0..) and held-out (1e9..) seeds
# Novel shapes in words the model knows: combinations it never saw (hollow and stretched squares
# and triangles only).
DESCRIBED = {"ring": "hollow circle", "oval": "wide circle"}


def write_examples(folder: Path, kind: str, count: int, token: str, round_holes: bool = False,
                   balanced: bool = True) -> list[str]:
    """``count`` scenes with one object of ``kind`` each, as PNGs plus ``metadata.jsonl``; returns the captions.

    Colours take turns; with ``balanced`` so do the backgrounds (8 examples: each background twice),
    without it they are the scene seed's (the first model-B figures of studies/REPORT.md: 5 of 8 on grass).
    """
    from diffugen.toyworld.scene import BACKGROUNDS, COLORS, make_scene

    folder.mkdir(parents=True, exist_ok=True)
    colours, backgrounds = list(COLORS), list(BACKGROUNDS)
    rows, captions = [], []
    hollow, shape = kind.startswith("hollow "), kind.removeprefix("hollow ")
    word = re.compile(rf"\b{re.escape(kind)}\b")  # "ring", not the "ring" of "during"
    for i in range(count):
        sc = make_scene(EXAMPLE_SEED + i, objects=[(colours[i % len(colours)], shape, hollow)], round_holes=round_holes,
                        background=backgrounds[i % len(backgrounds)] if balanced else None)
        name = f"{i:03d}.png"
        Image.fromarray(sc.image).save(folder / name)
        caption, found = word.subn("{}", sc.caption)
        assert found == 1, sc.caption
        rows.append(json.dumps({"file_name": name, "text": caption}))
        captions.append(caption.replace("{}", token))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return captions


def eval_prompts(n: int, word: str, eval_seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct ``(prompt, colour)`` pairs: "a <colour> <word> <on background> [time]"."""
    from diffugen.toyworld.scene import COLORS

    rng = random.Random(7 + eval_seed)
    backgrounds = ["on the road", "on grass", "on the grass", "on sand", "on the sand", "on water", "in the water"]
    times = ["", "", " at night", " at dusk", " during the day"]
    out, seen = [], set()
    while len(out) < n:
        colour = rng.choice(list(COLORS))
        prompt = f"a {colour} {word} {rng.choice(backgrounds)}{rng.choice(times)}"
        if len(seen) >= len(COLORS) * len(backgrounds) * len(times):
            seen.clear()  # more prompts than combinations: repeat them (seeds differ)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, colour))
    return out


def judge_image(image: np.ndarray, colour: str, kinds: tuple[tuple[str, ...], bool], tolerance: float,
                min_area: int) -> tuple[list, str | None, str | None]:
    """The requested colour's blobs (largest first) and the kind of the largest by each judge:

    - ``colour``: the blob itself, :func:`~diffugen.toyworld.truth.classify_shape`;
    - ``contrast``: the object the blob belongs to by contrast with the background
      (:func:`studies.judges.object_by_contrast`), with any enclosed hole
      (:func:`studies.judges.classify_with_holes`). Colour drift splits a ring into arcs for
      the first; ``studies/REPORT.md`` has both against a blind audit by eye.

    ``([], None, None)`` when the colour is absent.
    """
    from diffugen.toyworld.truth import classify_shape

    blobs = colour_blobs(image, colour, tolerance, min_area)
    if not blobs:
        return [], None, None
    body = object_by_contrast(image, blobs[0].mask)
    return (blobs, classify_shape(blobs[0].mask, *kinds),
            classify_with_holes(body if body is not None else blobs[0].mask, *kinds))


def judge(run: str, ds, colours: dict[str, str], shape: str, word: str, params, tolerance: float, min_area: int,
          kinds: tuple[tuple[str, ...], bool]) -> dict:
    """Shape rate (by both judges of :func:`judge_image`) and DAAM IoU of one generated dataset
    (``colours``: prompt → requested colour; ``kinds``: :func:`judged_kinds`)."""
    from diffugen.labels.daam import extract_labels

    counts = {s: 0 for s in kinds[0]}
    counts_contrast = {s: 0 for s in kinds[0]}
    present = right = right_contrast = 0
    ious: list[float] = []
    for sample in ds.iter_samples(progress=False):
        image = np.asarray(Image.open(sample.filepath).convert("RGB"))
        blobs, guess, guess_contrast = judge_image(image, colours[sample["prompt"]], kinds, tolerance, min_area)
        if not blobs:
            continue
        present += 1
        counts[guess] += 1
        right += guess == shape
        counts_contrast[guess_contrast] += 1
        right_contrast += guess_contrast == shape
        for hm in sample["word_heatmaps"] or []:
            if hm.word == word:
                m = np.asarray(Image.open(hm.map_path)).astype(np.float32) / 255.0
                pred = extract_labels(m, params).mask
                truth = np.zeros(pred.shape, bool)
                for r in blobs:
                    truth |= r.mask
                ious.append(iou(pred, truth))
    n = len(ds)
    return {"run": run, "images": n, "object_present": present / max(1, n), "shape_rate": right / max(1, n),
            "shape_rate_contrast": right_contrast / max(1, n), "shapes_seen": counts,
            "shapes_seen_contrast": counts_contrast,
            "daam_iou": float(np.mean(ious)) if ious else None, "daam_iou_n": len(ious)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="ring", choices=["oval", "ring", "star", "house", "diamond", "hollow-square", "hollow-triangle"],
                    help="oval, ring, star, house, diamond: never seen by the shipped model; hollow-square/-triangle: seen, with a word (a positive control)")
    ap.add_argument("--model", default="builtin:toyworld", help="the model (a toy-world diffusers folder)")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--unbalanced", action="store_true",
                    help="example backgrounds from the scene seeds, as in the first model-B figures of studies/REPORT.md (default: each background in turn)")
    ap.add_argument("--init-word", default=None, help="default: circle (square, triangle for the hollow ones); one word per vector with --num-vectors")
    ap.add_argument("--steps", type=int, default=1500, help="textual-inversion steps")
    ap.add_argument("--ti-batch", type=int, default=8)
    ap.add_argument("--num-vectors", type=int, default=1, help="embedding vectors the token gets")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--max-norm", default=None, help="cap on the token's embedding norm: a number or 'vocab' (default: none)")
    ap.add_argument("--n", type=int, default=100, help="prompts generated per run")
    ap.add_argument("--eval-seed", type=int, default=0,
                    help="another set of held-out prompts and image seeds (0: the set of the first figures in studies/REPORT.md)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 steps, 8 prompts")
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--tolerance", type=float, default=60.0)
    ap.add_argument("--min-area", type=int, default=MIN_AREA)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-controls", action="store_true", help="skip the plain-word and init-word runs")
    ap.add_argument("--keep", action="store_true",
                    help="keep the examples, embedding and images; the images are listed in samples.json there")
    ap.add_argument("--out", default=str(ROOT / "studies" / "out" / "textual_inversion_proof.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.n = 20, 8

    private_database()
    import fiftyone as fo
    from safetensors.torch import load_file

    from diffugen.config import DiffuGenConfig
    from diffugen.generation.runner import generate
    from diffugen.textual_inversion import train_textual_inversion

    token = f"<{args.shape}>"
    kind = args.shape.replace("-", " ")  # "hollow square": how the scene generator and judge name it
    args.init_word = args.init_word or (kind.split()[-1] if kind.startswith("hollow ") else "circle")
    work = Path(tempfile.mkdtemp(prefix="diffugen-ti-proof-"))
    kinds = judged_kinds(args.model, kind)
    examples = write_examples(work / "examples", kind, args.examples, token, round_holes=kinds[1],
                              balanced=not args.unbalanced)
    emb = work / f"{args.shape}.safetensors"
    t0 = time.time()
    result = train_textual_inversion(work / "examples", token, args.init_word, args.model, emb,
                                     steps=args.steps, lr=args.lr, batch_size=args.ti_batch, device=args.device,
                                     checkpoint_every=0, progress=False, num_vectors=args.num_vectors,
                                     max_norm=args.max_norm)
    train_s = time.time() - t0
    norms = [round(float(v), 3) for v in load_file(emb)[token].float().norm(dim=-1).reshape(-1)]
    del result.pipeline

    # (run, words in the prompt, the class word labeled)
    runs = [("token", token, token)]
    if not args.no_controls:
        runs += [("plain word", kind, kind.split()[-1]), ("init word", args.init_word, args.init_word.split()[-1])]
        if args.shape in DESCRIBED:
            runs.append(("described", DESCRIBED[args.shape], DESCRIBED[args.shape].split()[-1]))
    reports, kept = [], []
    for run, text, word in runs:
        pairs = eval_prompts(args.n, text, args.eval_seed)
        name = f"diffugen-study-ti-{len(reports)}"
        cfg = DiffuGenConfig(
            dataset_name=name, output_root=str(work / "gen"), model=args.model, device=args.device,
            width=64, height=64, steps=args.gen_steps, guidance_scale=args.guidance, scheduler="ddim", batch_size=8,
            negative_prompt="", templates=["{caption}"], attributes={"caption": [p for p, _ in pairs]},
            seeds={"min": args.eval_seed * 1_000_001, "max": args.eval_seed * 1_000_001 + 1_000_000, "count_per_prompt": 1},
            **({"textual_inversion": [{"path": str(emb), "token": token}]} if word == token else {"class_words": [word]}),
        )
        generate(cfg)
        ds = fo.load_dataset(name)
        reports.append(judge(run, ds, dict(pairs), kind, word, cfg.labels, args.tolerance, args.min_area, kinds))
        if args.keep:  # the database is this process's own: the image list outlives it
            kept += [{"run": run, "prompt": p, "seed": sd, "filepath": f}
                     for p, sd, f in zip(*ds.values(["prompt", "seed", "filepath"]))]
        ds.delete()

    main_run = reports[0]
    out = {"model": args.model, "shape": args.shape, "token": token, "init_word": args.init_word,
           "examples": args.examples, "balanced": not args.unbalanced,
           "example_captions": examples, "ti_steps": args.steps, "ti_batch": args.ti_batch, "num_vectors": args.num_vectors, "lr": args.lr,
           "max_norm": args.max_norm, "embedding_norms": norms,
           "train_seconds": round(train_s, 1), "final_loss": result.final_loss,
           "mean_loss_last_100": float(np.mean(result.losses[-100:])), "runs": reports}
    print(machine_line(args.device))
    print(f"textual inversion of {token} (init '{args.init_word}') on {args.examples} example scenes: "
          f"{args.steps} steps at batch {args.ti_batch} in {train_s:.0f} s, loss (last 100) {out['mean_loss_last_100']:.4f}, "
          f"embedding norm {norms}")
    for r in reports:
        daam = f"{r['daam_iou']:.3f} (n={r['daam_iou_n']})" if r["daam_iou"] is not None else "-"
        print(f"  {r['run']:11s}{r['images']} images: object present {r['object_present']:.1%}, DAAM mask IoU {daam}")
        for judge_name, rate, seen in (("colour", "shape_rate", "shapes_seen"), ("contrast", "shape_rate_contrast", "shapes_seen_contrast")):
            judged = ", ".join(f"{k} {v}" for k, v in r[seen].items() if v)
            print(f"      {kind} {r[rate]:.1%} by {judge_name} [shapes judged: {judged}]")
    for judge_name, rate in (("colour", "shape_rate"), ("contrast", "shape_rate_contrast")):
        print(f"shape rate with {token}, {judge_name} judge: {main_run[rate]:.1%} "
              f"[{mark(main_run[rate], TARGET_SHAPE_RATE, True)} target >= {TARGET_SHAPE_RATE:.0%}]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    if args.keep:
        (work / "samples.json").write_text(json.dumps(kept, indent=1))
        print(f"kept the examples, embedding and images in {work} (images listed in {work / 'samples.json'})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
