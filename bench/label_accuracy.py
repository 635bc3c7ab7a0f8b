"""How good are DiffuGen's unsupervised labels? Measured against the truth of the toy world.

Usage::

    python bench/label_accuracy.py [--n 200] [--skip 0] [--quick] [--model diffugen/toyworld/model] [--steps 25]
                                   [--guidance G] [--batch-size 8] [--tolerance 60] [--children 80]
                                   [--hollow-rate R] [--heatmap-method concept_attention] [--labels JSON] [--keep]

``--model builtin:toyworld-mmdit`` judges the SD3-style transformer trained on the same world
(joint-attention heatmaps; ``--heatmap-method concept_attention`` for ConceptAttention's).

Held-out prompts are captions of toy-world scenes with seeds from ``HELD_OUT_SEED`` on (training
used seeds below it); duplicates are skipped. They are generated with the trained model through
DiffuGen's own code path: a config (template ``{caption}``, class words ``circle``, ``square``,
``triangle``, one seed per prompt from the prompt's hash) run by ``diffugen.generation.runner.generate``
into a FiftyOne dataset: ``Runner.run_batch`` (cross-attention capture, per-word DAAM heatmaps) and
``build_sample`` (``extract_labels`` with the paper's Otsu threshold → ``daam_detections``).

The truth is read back from each generated image by colour
(:func:`diffugen.toyworld.truth.recover_instances`): palette pixels → connected components. A
requested ``<colour> <shape>`` is **present** when a component of that colour (≥ ``--min-area``
pixels) is there; its kind is judged by ``classify_shape`` (IoU with each kind's ideal mask). Reported:

* **prompt adherence**: requested objects present (target ≥ 90%), also per prompt (all present),
  right shape, and unrequested colours that appeared;
* **DAAM mask IoU per class**: the Otsu mask of the class word's heatmap (``extract_labels``) vs the
  union of the recovered blobs of the colours requested with that shape; ``drawn``: only pairs
  whose object was drawn (the labeler's quality), ``all``: every pair (a missing object counts 0)
  (target mean ≥ 0.6);
* **box AP50** per class: FiftyOne ``evaluate_detections`` of ``daam_detections`` against a
  ``ground_truth`` field of the recovered blobs (label: the shape requested for that colour).
* **label scores** (:func:`diffugen.toyworld.evaluation.label_metrics`), over the txt2img images and their
  img2img and inpaint children (``--children`` parents each): a label is right when its mask has IoU ≥
  0.5 with a true instance of its class (matched one-to-one by score); the AUROC of the scores, right
  vs wrong (target ≥ 0.97); precision of labels scored ≥ 0.5 (≥ 0.95) and the share of right labels
  kept there (≥ 80%); labels ≥ 0.5 per image/word pair whose object was not drawn (≤ 0.2); two-object
  images of two classes where one word's mask covers half of both (≤ 5%); the mean mask IoU per image
  and class word. A true instance is an object in a requested colour as drawn
  (:func:`diffugen.toyworld.evaluation.colour_instances`: a colour the model drew twice is two instances of its
  class, so a label of either is right; the tints it drifts to, connected to the palette colour, are part of the
  object). A second line judges the same labels against each requested colour's blobs taken together, as one
  instance: a label of one of two copies is wrong there.
* **YOLO bootstrapped from the DAAM labels** (``--yolo-train N`` prompts, 0 to skip): DiffuGen
  generates N more images from *training* captions (seeds below the held-out ones) into a second
  dataset, ``diffugen.curation.bootstrap.train_yolo`` trains a YOLOv8n-seg from its yaml on their DAAM polygons,
  ``label_yolo`` labels the held-out images, and both ``daam_detections`` and ``yolo_detections`` are
  evaluated against the truth with instance masks (``use_masks=True``): **mask mAP50** per class.

Numbers go to stdout and ``bench/out/label_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import ROOT, iou, machine_line, mark, private_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = "diffugen-bench-label-accuracy"
SHAPES = ("circle", "square", "triangle")
TARGET_ADHERENCE = 0.90
TARGET_IOU = 0.60
TARGET_AUROC, TARGET_PRECISION, TARGET_KEPT, TARGET_JUNK, TARGET_MERGED = 0.97, 0.95, 0.80, 0.2, 0.05


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="held-out prompts (one image each)")
    ap.add_argument("--skip", type=int, default=0,
                    help="skip the first held-out prompts: a fresh set, none of those the runs and studies before used")
    ap.add_argument("--quick", action="store_true", help="8 prompts, a smoke run of the whole bench")
    ap.add_argument("--model", default=None, help="diffusers folder, or builtin:toyworld / builtin:toyworld-mmdit "
                                                  "(default: the shipped toy-world model)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=None,
                    help="default: the model's own (the UNet model 7.5, the MMDiT 3.0, its diffugen.json)")
    ap.add_argument("--scheduler", default=None, help="default: the model's own (DDIM; the MMDiT's flow-matching Euler)")
    ap.add_argument("--heatmap-method", default="cross_attention", choices=["cross_attention", "concept_attention"])
    ap.add_argument("--self-attention-power", type=int, default=None,
                    help="Dataset Diffusion refinement power (default: the config default)")
    ap.add_argument("--self-attention-layers", default=None, choices=["down", "all"],
                    help="self-attention layers the refinement averages (default: the config default)")
    ap.add_argument("--heatmap-layers", default="daam", choices=["daam", "all"])
    ap.add_argument("--labels", default=None, metavar="JSON",
                    help='the config\'s "labels" settings, e.g. \'{"snap": 0}\' (default: the defaults)')
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=60.0, help="colour distance for the truth read-back")
    ap.add_argument("--min-area", type=int, default=12, help="pixels for a blob to count as an object")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hollow-rate", type=float, default=0.0,
                    help="share of squares/triangles asked hollow in the held-out prompts (0: the original world)")
    ap.add_argument("--children", type=int, default=80,
                    help="txt2img images that also get an img2img and an inpaint child (their labels join the score metrics)")
    ap.add_argument("--yolo-train", type=int, default=320, help="prompts generated to train YOLO on (0: skip YOLO)")
    ap.add_argument("--yolo-epochs", type=int, default=60)
    ap.add_argument("--yolo-imgsz", type=int, default=64, help="YOLO input size")
    ap.add_argument("--keep", action="store_true",
                    help="keep the images (default: delete); the dataset is in this run's private database and goes with it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "label_accuracy.json"))
    args = ap.parse_args(argv)
    if args.skip < 0:
        ap.error(f"--skip {args.skip}: expected a number of held-out prompts >= 0")
    n = 8 if args.quick else args.n
    if args.quick:
        args.yolo_train, args.yolo_epochs = min(args.yolo_train, 16), min(args.yolo_epochs, 1)
        args.children = min(args.children, 2)

    private_database()
    import fiftyone as fo

    from diffugen.config import DiffuGenConfig
    from diffugen.generation.runner import generate
    from diffugen.labels.daam import extract_labels
    from diffugen.labels.scoring import raw_maps
    from diffugen.toyworld import MMDIT_DIR, MODEL_DIR, model_available
    from diffugen.toyworld.evaluation import child_tasks, held_out_captions, judge_sample, label_metrics, requested
    from diffugen.toyworld.scene import ALL_LABELS
    from diffugen.toyworld.truth import classify_shape, recover_instances

    model = {"builtin:toyworld": MODEL_DIR, "builtin:toyworld-mmdit": MMDIT_DIR}.get(args.model) or Path(args.model or MODEL_DIR)
    if not model_available(model):
        print(f"no toy-world model at {model}: train it with python -m diffugen.toyworld.train "
              f"{'--arch mmdit ' if model == MMDIT_DIR else ''}--out {model}")
        return 2

    prompts = held_out_captions(args.skip + n, args.hollow_rate)[args.skip :]
    work = Path(tempfile.mkdtemp(prefix="diffugen-label-accuracy-"))
    cfg = DiffuGenConfig(
        dataset_name=DATASET, output_root=str(work / "eval"), model=str(model), device=args.device,
        width=64, height=64, steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler,
        batch_size=args.batch_size, negative_prompt="",
        templates=["{caption}"], attributes={"caption": prompts},
        seeds={"min": 0, "max": 1_000_000, "count_per_prompt": 1},
        class_words=list(SHAPES), classes=list(SHAPES), heatmap_layers=args.heatmap_layers,
        heatmap_method=args.heatmap_method,
        **(child_tasks(min(args.children, n)) if args.children else {}),
        **({} if args.self_attention_power is None else {"self_attention_power": args.self_attention_power}),
        **({} if args.self_attention_layers is None else {"self_attention_layers": args.self_attention_layers}),
        **({} if args.labels is None else {"labels": json.loads(args.labels)}),
    )
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    t0 = time.time()
    summary = generate(cfg)
    gen_s = time.time() - t0
    ds = fo.load_dataset(DATASET)
    params = cfg.labels
    per_colour, per_object = [], []
    for s in ds.iter_samples(progress=False):
        image = np.asarray(Image.open(s.filepath).convert("RGB"))
        per_colour.append(judge_sample(s, image=image))
        per_object.append(judge_sample(s, per_object=True, image=image))
    scores, colour_scores = label_metrics(per_object), label_metrics(per_colour)
    ds = ds.match(fo.ViewField("task") == "txt2img")  # the mask and box figures: txt2img images, as before
    guidance = sorted(set(ds.values("guidance_scale")))  # as asked, else the model's own
    guidance = guidance[0] if len(guidance) == 1 else guidance

    asked = present = shape_ok = prompts_all = extras = 0
    ious: dict[str, list[float]] = {c: [] for c in SHAPES}
    ious_drawn: dict[str, list[float]] = {c: [] for c in SHAPES}
    ious_fixed: dict[str, list[float]] = {c: [] for c in SHAPES}  # threshold 0.5 instead of Otsu (reference)
    area_ratio: list[float] = []
    fixed = params.model_copy(update={"threshold": 0.5})
    for sample in ds.iter_samples(autosave=True, progress=False):
        image = np.asarray(Image.open(sample.filepath).convert("RGB"))
        h, w = image.shape[:2]
        req = requested(sample["prompt"])
        colour_shape = {c: sh for c, sh, _ in req}
        found = recover_instances(image, args.tolerance, args.min_area, open_noise=True)
        by_colour: dict[str, list] = {}
        for r in found:
            by_colour.setdefault(r.color, []).append(r)
        extras += len({r.color for r in found} - set(colour_shape))
        ok_all = True
        for colour, shape, kind in req:
            asked += 1
            blobs = by_colour.get(colour, [])
            if blobs:
                present += 1
                biggest = max(blobs, key=lambda r: r.area)
                shape_ok += classify_shape(biggest.mask, ALL_LABELS) == kind
            else:
                ok_all = False
        prompts_all += ok_all
        # Ground truth: the blobs of the requested colours, labelled with the shape asked for.
        dets = []
        truth = {c: np.zeros((h, w), bool) for c in SHAPES}
        for colour, shape, _ in req:
            for r in by_colour.get(colour, []):
                x, y, bw, bh = r.box
                truth[shape] |= r.mask
                dets.append(fo.Detection(label=shape, bounding_box=[x / w, y / h, bw / w, bh / h],
                                         mask=r.mask[y : y + bh, x : x + bw], color=colour))
        sample["ground_truth"] = fo.Detections(detections=dets)
        # DAAM masks: the paper's Otsu labels of each class word's heatmap (as build_sample made them).
        # One map per class word: a word said twice has a heatmap per occurrence, and its word map is
        # their mean in units of attention (label_heatmaps' step 1).
        occurrences: dict[str, list] = {}
        for hm in sample["word_heatmaps"] or []:
            occurrences.setdefault(hm["word"], []).append(hm)
        for group in occurrences.values():
            maps = [np.asarray(Image.open(hm.map_path)).astype(np.float32) / 255.0 for hm in group]
            m = maps[0] if len(group) == 1 else np.mean(raw_maps(maps, [(h["floor"], h["peak"]) for h in group]), axis=0)
            label = group[0].label
            pred = extract_labels(m, params).mask
            v = iou(pred, truth[label])
            ious[label].append(v)
            if truth[label].any():
                ious_drawn[label].append(v)
                ious_fixed[label].append(iou(extract_labels(m, fixed).mask, truth[label]))
                area_ratio.append(float(pred.sum() / truth[label].sum()))

    ap50, ap50_mean = ap50_per_class(ds, "daam_detections", "eval")
    yolo = yolo_bootstrap(ds, cfg, prompts, args, work) if args.yolo_train > 0 else None

    per_class_drawn = {c: float(np.mean(v)) if v else float("nan") for c, v in ious_drawn.items()}
    per_class_all = {c: float(np.mean(v)) if v else float("nan") for c, v in ious.items()}
    mean_drawn = float(np.nanmean(list(per_class_drawn.values())))
    mean_all = float(np.nanmean(list(per_class_all.values())))
    per_class_fixed = {c: float(np.mean(v)) if v else float("nan") for c, v in ious_fixed.items()}
    mean_fixed = float(np.nanmean(list(per_class_fixed.values())))
    ratio = float(np.median(area_ratio)) if area_ratio else float("nan")
    adherence = present / max(1, asked)
    out = {
        "model": str(model), "images": len(ds), "prompts": n, "skipped_prompts": args.skip, "steps": args.steps, "guidance_scale": guidance,
        "scheduler": args.scheduler, "tolerance": args.tolerance, "min_area": args.min_area,
        "generate_seconds": round(gen_s, 1), "summary": str(summary),
        "adherence": adherence, "prompts_all_present": prompts_all / max(1, len(ds)),
        "shape_correct_of_present": shape_ok / max(1, present), "unrequested_colours_per_image": extras / max(1, len(ds)),
        "requested_objects": asked,
        "iou_drawn": per_class_drawn, "iou_drawn_mean": mean_drawn, "iou_all": per_class_all, "iou_all_mean": mean_all,
        "iou_pairs": {c: len(v) for c, v in ious.items()},
        "iou_drawn_threshold_0.5": per_class_fixed, "iou_drawn_threshold_0.5_mean": mean_fixed,
        "otsu_mask_area_over_truth_median": ratio,
        "ap50": ap50, "ap50_mean": ap50_mean,
        "hollow_rate": args.hollow_rate, "heatmap_method": args.heatmap_method, "self_attention_power": cfg.self_attention_power, "self_attention_layers": cfg.self_attention_layers, "heatmap_layers": cfg.heatmap_layers,
        "yolo": yolo, "scores": scores, "scores_per_colour": colour_scores,
    }
    print(machine_line(args.device))
    print(f"{len(ds)} images of {n} held-out prompts{f' (after the first {args.skip})' if args.skip else ''}, {args.steps} {args.scheduler or 'default'} steps, guidance {guidance}, "
          f"generated and labeled in {gen_s:.0f} s")
    print(f"prompt adherence: {adherence:.1%} of {asked} requested objects present "
          f"[{mark(adherence, TARGET_ADHERENCE, True)} target >= {TARGET_ADHERENCE:.0%}]; "
          f"all objects present in {prompts_all / max(1, len(ds)):.1%} of images; right shape for "
          f"{shape_ok / max(1, present):.1%} of those present; {extras / max(1, len(ds)):.2f} unrequested colours per image")
    for c in SHAPES:
        print(f"  {c:8s} IoU drawn {per_class_drawn[c]:.3f} (n={len(ious_drawn[c])})  all {per_class_all[c]:.3f} "
              f"(n={len(ious[c])})  AP50 {ap50[c]:.3f}")
    print(f"DAAM mask IoU (Otsu), mean over classes: {mean_drawn:.3f} where drawn "
          f"[{mark(mean_drawn, TARGET_IOU, True)} target >= {TARGET_IOU}], {mean_all:.3f} over all requested")
    print(f"  for reference: Otsu masks are {ratio:.2f}x the true area (median); a fixed threshold of 0.5 gives "
          f"IoU {mean_fixed:.3f} where drawn ({', '.join(f'{c} {v:.3f}' for c, v in per_class_fixed.items())})")
    print(f"box AP50 (FiftyOne evaluate_detections, daam_detections vs ground_truth): {ap50_mean:.3f}")
    print_scores(scores)
    print(f"  judged per requested colour (its blobs one instance; a label of one of two copies is wrong): "
          f"{colour_scores['right']} right labels, AUROC {colour_scores['auroc']:.3f}, precision "
          f"{colour_scores['precision_at_threshold']:.3f} of {colour_scores['labels_at_threshold']} keeping "
          f"{colour_scores['right_kept_at_threshold']:.1%}, junk {colour_scores['junk_per_not_drawn_pair']:.2f}, "
          f"mask IoU {colour_scores['mask_iou']:.3f}")
    if yolo:
        print(f"YOLO-seg bootstrapped from DAAM labels: {yolo['train_images']} generated training images, "
              f"{yolo['epochs']} epochs at {yolo['imgsz']} px in {yolo['train_seconds']:.0f} s")
        for c in SHAPES:
            print(f"  {c:8s} mask AP50: DAAM {yolo['daam_mask_ap50'][c]:.3f}  YOLO {yolo['yolo_mask_ap50'][c]:.3f}")
        print(f"mask mAP50 against the truth: DAAM {yolo['daam_mask_map50']:.3f}, YOLO {yolo['yolo_mask_map50']:.3f} "
              f"[{'YOLO beats' if yolo['yolo_mask_map50'] > yolo['daam_mask_map50'] else 'YOLO does not beat'} "
              f"the DAAM labels it was trained on]")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    if not args.keep:
        fo.delete_dataset(DATASET)
        if fo.dataset_exists(DATASET + "-train"):
            fo.delete_dataset(DATASET + "-train")
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept the media in {work}")
    return 0


def print_scores(m: dict) -> None:
    """The label score's figures (:func:`diffugen.toyworld.evaluation.label_metrics`) against the targets."""
    print(f"label scores, every task ({m['labels']} labels, {m['right']} right, in {m['images']} images; "
          f"judged per object drawn):")
    print(f"  AUROC right vs wrong {m['auroc']:.3f} [{mark(m['auroc'], TARGET_AUROC, True)} target >= {TARGET_AUROC}]")
    print(f"  score >= 0.5: precision {m['precision_at_threshold']:.3f} of {m['labels_at_threshold']} labels "
          f"[{mark(m['precision_at_threshold'], TARGET_PRECISION, True)} target >= {TARGET_PRECISION}], keeping "
          f"{m['right_kept_at_threshold']:.1%} of the right labels [{mark(m['right_kept_at_threshold'], TARGET_KEPT, True)} "
          f"target >= {TARGET_KEPT:.0%}]")
    print(f"  objects not drawn: {m['junk_per_not_drawn_pair']:.2f} labels >= 0.5 per image/word pair "
          f"({m['not_drawn_pairs']} pairs) [{mark(m['junk_per_not_drawn_pair'], TARGET_JUNK)} target <= {TARGET_JUNK}]")
    print(f"  two objects of two classes: one word's mask covers both in {m['merged_two_object']:.1%} of "
          f"{m['two_object_images']} images [{mark(m['merged_two_object'], TARGET_MERGED)} target <= {TARGET_MERGED:.0%}]; "
          f"one label covers two same-class objects in {m['joined_same_class']:.1%} of {m['same_class_groups']}")
    print(f"  mean mask IoU per image and class word: {m['mask_iou']:.3f}")


def yolo_bootstrap(ds, cfg, held_out: list[str], args, work: Path) -> dict:
    """Generate training images, train YOLO-seg on their DAAM labels, label ``ds``, compare mask mAP50."""
    import fiftyone as fo

    from diffugen.curation.bootstrap import train_yolo
    from diffugen.generation.runner import generate
    from diffugen.labels.yolo import label_yolo
    from diffugen.toyworld.evaluation import captions

    name = DATASET + "-train"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    train_cfg = cfg.model_copy(update={
        "dataset_name": name, "output_root": str(work / "train"),
        "attributes": {"caption": captions(args.yolo_train, 0, held_out)}, "img2img": None, "inpaint": None,
    })
    t0 = time.time()
    generate(train_cfg)
    gen_s = time.time() - t0
    train_ds = fo.load_dataset(name)
    t0 = time.time()
    weights = train_yolo(train_ds, epochs=args.yolo_epochs, imgsz=args.yolo_imgsz, device=args.device,
                         out_dir=work / "yolo")
    train_s = time.time() - t0
    label_yolo(ds, weights, imgsz=args.yolo_imgsz, device=args.device, conf=0.05)
    out = {"train_images": len(train_ds), "epochs": args.yolo_epochs, "imgsz": args.yolo_imgsz,
           "generate_seconds": round(gen_s, 1), "train_seconds": round(train_s, 1)}
    for field, key in (("daam_detections", "daam"), ("yolo_detections", "yolo")):
        out[f"{key}_mask_ap50"], out[f"{key}_mask_map50"] = ap50_per_class(ds, field, f"{key}_mask", use_masks=True)
    return out


def ap50_per_class(ds, field: str, eval_key: str, use_masks: bool = False) -> tuple[dict[str, float], float]:
    """FiftyOne ``evaluate_detections`` of ``field`` against ``ground_truth`` at IoU 0.5: AP50 per class and mAP50."""
    res = ds.evaluate_detections(field, gt_field="ground_truth", eval_key=eval_key, use_masks=use_masks,
                                 compute_mAP=True, iou_threshs=[0.5], classes=list(SHAPES))
    return {c: float(res.mAP(classes=[c])) for c in SHAPES}, float(res.mAP())


if __name__ == "__main__":
    sys.exit(main())
