"""Overhead of heatmap capture: bare diffusers vs our capture vs daam's ``trace``, per image.

Usage::

    python bench/bench_capture.py [--n 6] [--reps 3] [--size 512] [--steps 5] [--device cpu|cuda]
                                  [--sd-unet] [--no-daam] [--threads N] [--verbose]

The same pipeline (``builtin:tiny``, or with ``--sd-unet`` an SD-1.5-sized one with random weights,
meant for a GPU), prompts and seeds are generated one image at a time in three modes:

* ``bare``: ``pipe(prompt, ...)``, plain diffusers;
* ``ours``: what ``Runner.run_batch`` does: tokenize + embed, :func:`capture_heatmaps`,
  ``collector.reset`` with the class words' tokens, the pipeline call, ``word_heatmaps`` → uint8;
* ``refined`` (with ``--refine-power N``): ``ours`` plus Dataset Diffusion's self-attention
  refinement (:func:`capture_heatmaps` with ``refine_power=N`` and ``--refine-layers`` (down blocks,
  the default, or all): self-attention recorded at the finest
  grid of at most 32×32 positions, ``A^N`` applied to the maps);
* ``daam``: ``with trace(pipe)``, the pipeline call, the global heat map and each class word's
  ``expand_as`` map (only when daam is importable).

Each mode runs once to warm up; then per repetition and image the modes run back to back, in an
order rotated per image, so drifts of the machine hit all modes alike. Reported: the median
per-image time of each mode and the ratios of those medians (plus the median of paired ratios).
Target: ours/bare <= 1.10.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import build_pipeline, machine_line, mark, median, pick_device, timer

from diffugen.generation.attention import capture_heatmaps
from diffugen.generation.sd import embed, tokenize, word_positions

TARGET = 1.10

PROMPTS = [
    ("a photo of a red car on a road", ["car"]),
    ("a yellow bus and a white van in a city street", ["bus", "van"]),
    ("a black truck with big tires near a house", ["truck", "tires"]),
    ("a blue car and a green bus on a highway at night", ["car", "bus"]),
    ("a silver taxi parked in front of a building", ["taxi", "building"]),
    ("a person and a dog near a tree in a park", ["person", "dog", "tree"]),
]


def run_bare(pipe, prompt, words, seed, a):
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=a.steps,
                height=a.size, width=a.size, guidance_scale=7.5, output_type="np").images


def run_ours(pipe, prompt, words, seed, a, refine_power=0):
    enc = tokenize(pipe, prompt)
    positions = [word_positions(pipe, enc, w) for w in words]
    positions = [p for p in positions if p]
    negative = tokenize(pipe, "")
    scale = getattr(pipe, "vae_scale_factor", 8)
    with capture_heatmaps(pipe.unet, refine_power=refine_power, refine_layers=a.refine_layers) as collector:
        collector.reset(1, sorted({t for p in positions for t in p}), (a.size // scale, a.size // scale))
        images = pipe(prompt_embeds=embed(pipe, [enc]), negative_prompt_embeds=embed(pipe, [negative]),
                      generator=[torch.Generator("cpu").manual_seed(seed)], num_inference_steps=a.steps,
                      height=a.size, width=a.size, guidance_scale=7.5, output_type="np").images
        maps = collector.word_heatmaps([positions], (a.size, a.size))
    _ = [[(m.numpy() * 255).round().astype(np.uint8) for m in row] for row in maps]
    return images


def run_refined(pipe, prompt, words, seed, a):
    return run_ours(pipe, prompt, words, seed, a, refine_power=a.refine_power)


def run_daam(pipe, prompt, words, seed, a):
    from daam import trace

    with trace(pipe) as tc:
        images = run_bare(pipe, prompt, words, seed, a)
        global_map = tc.compute_global_heat_map()
        _ = [global_map.compute_word_heat_map(w).expand_as(tc.last_image) for w in words]
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="images per repetition (prompt i %% 6, seed i)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--sd-unet", action="store_true", help="SD-1.5-sized random-weight pipeline (for GPUs)")
    ap.add_argument("--no-daam", action="store_true", help="skip daam even if installed")
    ap.add_argument("--refine-power", type=int, default=0, help="also time the self-attention refinement with this power")
    ap.add_argument("--refine-layers", default="down", choices=["down", "all"],
                    help="self-attention layers the refinement records (the config's self_attention_layers)")
    ap.add_argument("--verbose", action="store_true", help="print every timing")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    device = pick_device(a.device)
    modes = {"bare": run_bare, "ours": run_ours}
    if a.refine_power:
        modes["refined"] = run_refined
    if not a.no_daam:
        try:
            import daam  # noqa: F401

            if a.size not in (512, 768):
                print(f"note: daam sizes its maps for 512/768 px images; at --size {a.size} it still runs, "
                      "with a different layer-factor bookkeeping")
            modes["daam"] = run_daam
        except ImportError:
            print("daam not importable: daam column skipped")

    pipe = build_pipeline(a.sd_unet, device)
    print(machine_line(device))
    print(f"model={'sd-1.5-sized (random)' if a.sd_unet else 'builtin:tiny'} size={a.size} steps={a.steps} "
          f"n={a.n} reps={a.reps} modes={list(modes)}")

    with torch.no_grad():
        for name, fn in modes.items():  # warm-up
            fn(pipe, *PROMPTS[0], 0, a)

        times: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        for rep in range(a.reps):
            for i in range(a.n):
                prompt, words = PROMPTS[i % len(PROMPTS)]
                k = (i + rep) % len(names)
                for name in names[k:] + names[:k]:
                    with timer(times[name], device, cpu[name]):
                        modes[name](pipe, prompt, words, i, a)
                    if a.verbose:
                        print(f"  rep {rep} image {i} {name}: {times[name][-1]:.3f} s wall, {cpu[name][-1]:.3f} s CPU")

    med = {m: median(t) for m, t in times.items()}
    for m, t in times.items():
        print(f"{m:5s}: median {med[m]:.3f} s/image (min {min(t):.3f}, max {max(t):.3f}, {len(t)} images)")
    paired = {m: median([x / b for x, b in zip(times[m], times["bare"])]) for m in modes if m != "bare"}
    line = f"ours/bare = {med['ours'] / med['bare']:.2f}"
    if "refined" in med:
        line += f"  refined/bare = {med['refined'] / med['bare']:.2f}"
    if "daam" in med:
        line += f"  daam/bare = {med['daam'] / med['bare']:.2f}"
    print(line + "   (ratio of median per-image times)")
    print("paired:   " + "  ".join(f"{m}/bare = {r:.2f}" for m, r in paired.items()) + "   (median of per-image ratios)")
    if device == "cpu":
        cmed = {m: median(t) for m, t in cpu.items()}
        print("CPU time: " + "  ".join(f"{m}/bare = {cmed[m] / cmed['bare']:.2f}" for m in modes if m != "bare")
              + "   (ratio of median per-image process CPU times; robust to other load on the machine)")
    r = med["ours"] / med["bare"]
    print(f"target ours/bare <= {TARGET:.2f}: {mark(r, TARGET)}")


if __name__ == "__main__":
    main()
