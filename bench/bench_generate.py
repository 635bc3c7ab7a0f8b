"""The whole generate loop vs bare diffusers generation of the same images.

Usage::

    python bench/bench_generate.py [--model builtin:tiny|builtin:toyworld|builtin:toyworld-mmdit|builtin:tiny-sdxl|builtin:tiny-sd3|builtin:tiny-flux|builtin:tiny-flux2|builtin:tiny-flux2-dev]
                                   [--size 256] [--steps 5] [--guidance G] [--batch-size 4] [--reps 5]
                                   [--device cpu|cuda] [--threads N]

Writes a temporary config (2 templates × attributes × 2 seeds = 16 images with class words in every
prompt) and times, with the model already loaded:

* ``generate``: ``diffugen.generation.runner.generate(cfg, runner=runner)`` into a fresh FiftyOne
  dataset (deleted before and after): prompt encoding, capture, word heatmaps, unsupervised labels,
  PNG files, FiftyOne samples;
* ``bare``: the same pipeline called with the same prompts, negative prompt, seeds (CPU generators),
  steps, guidance, size and batches, ``output_type="np"``: no capture, no labels, no files, no
  database. FLUX (guidance-distilled) takes no negative prompt: its config has none and its bare
  call passes none.

The config sets ``steps``, ``guidance_scale`` (7.5; FLUX 3.5, its embedded guidance), ``width`` and
``height`` explicitly, so what an unset value defaults to does not change the figures; the scheduler
is DDIM for ``builtin:tiny``/``builtin:toyworld`` (as before) and the model's own for the other
families (SDXL's Euler, SD3's and FLUX's flow matching). The heatmap refinement is the config's
default (``self_attention_power``, printed).

Repetitions alternate the order of the two. Reported: the ratio of the median times (target
<= 1.25) and where the time of ``generate`` goes, from the runner's own phase timings
(``Runner.timings``: prompt encoding + pipeline calls, heatmaps, labels, files, ``open_dataset``,
inserts; the remainder: pipeline lookup, planning, the resume query, building the samples).

``builtin:tiny`` (the default: random weights, 256² in 5 steps) is a stress case for everything
around the pipeline: its heatmaps are noise, so each image gets ~25 detections with ~1,000 polygon
points, 10× what a trained model's maps give. ``--model builtin:toyworld`` (the trained toy model,
toy-world prompts; use ``--size 64 --steps 25``) has realistic labels, and so has ``builtin:toyworld-mmdit``
(the SD3-style transformer trained on the same world, at its own guidance 3 and flow-matching Euler). ``builtin:tiny-sdxl``,
``builtin:tiny-sd3``, ``builtin:tiny-flux``, ``builtin:tiny-flux2`` and ``builtin:tiny-flux2-dev`` are the other families' random-weight tiny pipelines
(the same prompts as ``builtin:tiny``), for the loop's overhead per family.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar in the figures (tqdm reads it when imported)

import torch  # noqa: E402

from _common import machine_line, mark, median, pick_device, private_database, sync  # noqa: E402

private_database()

import fiftyone as fo  # noqa: E402

from diffugen.config import load_config  # noqa: E402
from diffugen.generation.planner import plan  # noqa: E402
from diffugen.generation.runner import Runner, generate  # noqa: E402

TARGET = 1.25
DATASET = "diffugen-bench-generate"
PHASES = {  # Runner.timings keys → how they are printed
    "pipeline": "encode + pipeline calls", "heatmaps": "heatmaps", "labels": "labels", "files": "files (PNGs)",
    "open_dataset": "open_dataset", "insert": "inserts",
}


MODELS = ["builtin:tiny", "builtin:toyworld", "builtin:toyworld-mmdit", "builtin:tiny-sdxl", "builtin:tiny-sd3",
          "builtin:tiny-flux", "builtin:tiny-flux2", "builtin:tiny-flux2-dev"]
GUIDANCE = {"builtin:toyworld-mmdit": 3.0,  # its own (diffugen.json)
            "builtin:tiny-flux": 3.5,  # FLUX dev's embedded guidance; 7.5 (classifier-free) for the others
            "builtin:tiny-flux2": 4.0,  # FLUX.2 [klein] Base's classifier-free default
            "builtin:tiny-flux2-dev": 4.0}  # FLUX.2 [dev]'s distilled guidance


def write_config(folder: Path, size: int, steps: int, batch_size: int, device: str, model: str,
                 guidance: float | None = None) -> Path:
    cfg = {
        "dataset_name": DATASET,
        "output_root": str(folder / "out"),
        "model": model,
        "device": device,
        "width": size, "height": size, "steps": steps, "batch_size": batch_size,
        "guidance_scale": guidance if guidance is not None else GUIDANCE.get(model, 7.5),
        # builtin:tiny and toyworld as before; the other families keep their own scheduler (flow matching for SD3/FLUX)
        "scheduler": "ddim" if model in ("builtin:tiny", "builtin:toyworld") else None,
        "templates": [
            "a photo of a {color} {object} on a road",
            "a {object} and a tree near a {place}",
        ],
        "attributes": {"color": ["red", "yellow"], "object": ["car", "bus"], "place": ["house", "bridge"]},
        "seeds": [0, 1],
        "class_words": ["car", "bus", "tree"],
        "negative_prompt": "blurry, low quality",
    }
    if model in ("builtin:toyworld", "builtin:toyworld-mmdit"):  # their own vocabulary
        cfg.update(templates=["a {color} {object} on the {place}", "{place} with a {color} {object} and a white square"],
                   attributes={"color": ["red", "yellow"], "object": ["circle", "triangle"], "place": ["road", "grass"]},
                   class_words=["circle", "square", "triangle"], negative_prompt="")
    if model in ("builtin:tiny-flux", "builtin:tiny-flux2", "builtin:tiny-flux2-dev"):  # FLUX: guidance-distilled; FLUX.2's pipeline takes none
        cfg["negative_prompt"] = ""
    path = folder / "bench_generate.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def run_bare(pipe, cfg, items) -> None:
    from diffugen.generation.family import model_defaults

    bs = cfg.batch_size
    flux = type(pipe).__name__.startswith("Flux")  # takes no negative prompt
    # What the model's folder records for its calls (the toy MMDiT: no T5 positions), as generate passes it
    recorded = {k: v for k, v in model_defaults(pipe).items() if k != "guidance_scale"}
    for i in range(0, len(items), bs):
        batch = items[i : i + bs]
        negative = {} if flux else {"negative_prompt": [cfg.negative_prompt] * len(batch)}
        pipe(
            prompt=[it.prompt for it in batch],
            **negative,
            generator=[torch.Generator("cpu").manual_seed(it.seed) for it in batch],
            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
            height=cfg.height, width=cfg.width, output_type="np", **recorded,
        )


def delete_dataset() -> None:
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)


def label_stats(ds) -> dict[str, float]:
    n = len(ds)
    dets = sum(len(d.detections) for d in ds.values("daam_detections") if d is not None)
    pts = sum(len(p.points[0]) for pl in ds.values("daam_polygons") if pl is not None for p in pl.polylines)
    words = sum(len(w or []) for w in ds.values("word_heatmaps"))
    return {"det": dets / n, "pts": pts / n, "words": words / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny", choices=MODELS)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None, help="guidance_scale (default 7.5; FLUX 3.5)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)

    tmp = Path(tempfile.mkdtemp(prefix="diffugen-bench-gen-"))
    try:
        cfg = load_config(write_config(tmp, a.size, a.steps, a.batch_size, device, a.model, a.guidance))
        items = plan(cfg, "txt2img")
        runner = Runner(cfg)
        pipe = runner.pipeline("txt2img")  # model load excluded from the timings
        print(machine_line(device))
        print(f"{a.model} ({type(pipe).__name__}, {type(pipe.scheduler).__name__}): {len(items)} images, "
              f"{cfg.width}x{cfg.height}, {cfg.steps} steps, guidance {cfg.guidance_scale}, batch {cfg.batch_size}, "
              f"class words {cfg.class_words}, negative prompt {cfg.negative_prompt!r}, "
              f"self_attention_power {cfg.self_attention_power}, reps {a.reps}")
        fo.list_datasets()  # connect to the database before timing
        delete_dataset()

        with torch.no_grad():
            run_bare(pipe, cfg, items[: a.batch_size])  # warm-up (first-call costs)

        times: dict[str, list[float]] = {"bare": [], "generate": []}
        parts: list[dict[str, float]] = []
        stats: dict[str, float] = {}
        for rep in range(a.reps):
            order = ["bare", "generate"] if rep % 2 == 0 else ["generate", "bare"]
            for mode in order:
                if mode == "bare":
                    sync(device)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        run_bare(pipe, cfg, items)
                    sync(device)
                    times["bare"].append(time.perf_counter() - t0)
                else:
                    delete_dataset()
                    shutil.rmtree(tmp / "out", ignore_errors=True)
                    runner.timings = {}
                    sync(device)
                    t0 = time.perf_counter()
                    summary = generate(cfg, runner=runner)
                    sync(device)
                    dt = time.perf_counter() - t0
                    times["generate"].append(dt)
                    parts.append({**runner.timings, "total": dt})
                    runner.timings = None
                    made = sum(t.made for t in summary.tasks)
                    assert made == len(items), summary
                    ds = fo.load_dataset(DATASET)
                    assert len(ds) == len(items), len(ds)
                    if not stats:
                        stats.update(label_stats(ds))
                    delete_dataset()
            print(f"  rep {rep}: bare {times['bare'][-1]:.2f} s, generate {times['generate'][-1]:.2f} s, "
                  f"ratio {times['generate'][-1] / times['bare'][-1]:.2f}")

        mb, mg = median(times["bare"]), median(times["generate"])
        ratio = mg / mb
        p = sorted(parts, key=lambda x: x["total"])[len(parts) // 2]  # the breakdown of the median run
        print(f"bare     : median {mb:.2f} s ({len(items) / mb:.1f} images/s)")
        print(f"generate : median {mg:.2f} s ({len(items) / mg:.1f} images/s)")
        phases = {k: p.get(k, 0.0) for k in PHASES}
        other = p["total"] - sum(phases.values())
        print(f"  inside the median generate run ({p['total']:.2f} s): "
              + ", ".join(f"{PHASES[k]} {v:.2f} s" for k, v in phases.items())
              + f", other (pipeline lookup, plan, resume query, fo.Sample objects) {other:.2f} s")
        print(f"  labels per sample: {stats['det']:.1f} detections, "
              f"{stats['pts']:.0f} polygon points, {stats['words']:.1f} word heatmaps")
        print(f"generate/bare = {ratio:.2f}   (ratio of median times; per rep: "
              + ", ".join(f"{g / b:.2f}" for g, b in zip(times["generate"], times["bare"])) + ")")
        print(f"target generate/bare <= {TARGET:.2f}: {mark(ratio, TARGET)}")
    finally:
        delete_dataset()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
