"""The toy world: scene generator (masks, captions, determinism, truth by colour) and the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffugen.toyworld import load_toyworld_pipeline, load_world, model_available
from diffugen.toyworld.scene import (
    ALL_LABELS,
    BACKGROUNDS,
    COLORS,
    MIN_BACKGROUND_DISTANCE,
    SHAPES,
    TEXTURE_AMPLITUDE,
    TIME_BRIGHTNESS,
    VOCABULARY,
    make_scene,
)
from diffugen.toyworld.truth import classify_shape, recover_instances

SEEDS = range(60)


def test_backgrounds_are_far_from_every_object_colour():
    for bg in BACKGROUNDS.values():
        for b in TIME_BRIGHTNESS.values():
            for tex in (-TEXTURE_AMPLITUDE, 0, TEXTURE_AMPLITUDE):
                px = np.clip((np.array(bg) + tex) * b, 0, 255)
                for name, rgb in COLORS.items():
                    assert np.linalg.norm(px - np.array(rgb)) > MIN_BACKGROUND_DISTANCE, (bg, b, tex, name)


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_match_the_drawing(seed):
    sc = make_scene(seed)
    assert sc.image.shape == (64, 64, 3) and sc.image.dtype == np.uint8
    assert 1 <= len(sc.objects) <= 3
    assert len({o.color for o in sc.objects}) == len(sc.objects)
    union = np.zeros((64, 64), bool)
    for o in sc.objects:
        assert o.shape in SHAPES and o.color in COLORS
        assert o.mask.sum() > 50
        assert (sc.image[o.mask] == COLORS[o.color]).all()
        assert not (union & o.mask).any()  # no overlap
        union |= o.mask
        x, y, w, h = o.box
        ys, xs = np.nonzero(o.mask)
        assert xs.min() >= x and xs.max() < x + w and ys.min() >= y and ys.max() < y + h
        assert classify_shape(o.mask, ALL_LABELS) == o.kind
    # No background pixel has a palette colour.
    bg = sc.image[~union].astype(int)
    for rgb in COLORS.values():
        assert (np.linalg.norm(bg - np.array(rgb), axis=1) > MIN_BACKGROUND_DISTANCE).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_colour_recovery_gives_the_same_instances(seed):
    sc = make_scene(seed)
    got = {r.color: r for r in recover_instances(sc.image, tolerance=1.0)}
    assert sorted(got) == sorted(o.color for o in sc.objects)
    for o in sc.objects:
        assert (got[o.color].mask == o.mask).all()
    # The loose tolerance used for generated images finds the same instances on a rendered scene.
    loose = {r.color: r for r in recover_instances(sc.image)}
    for o in sc.objects:
        assert (loose[o.color].mask == o.mask).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_mentions_each_object(seed):
    sc = make_scene(seed)
    cap = sc.caption
    for o in sc.objects:
        assert o.label in cap
    words = {w.strip(",") for w in cap.split()}
    assert words <= set(VOCABULARY), words - set(VOCABULARY)
    assert any(w in cap for w in {"road": ["road"], "grass": ["grass"], "sand": ["sand"], "water": ["water"]}[sc.attributes["background"]])


def test_captions_are_varied():
    caps = [make_scene(s).caption for s in range(200)]
    assert len(set(caps)) > 190
    starts = {c.split()[0] for c in caps}
    assert len(starts) >= 6


def test_deterministic_by_seed():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert (a.image == b.image).all() and a.caption == b.caption and a.attributes == b.attributes
    assert [(o.color, o.shape, o.box) for o in a.objects] == [(o.color, o.shape, o.box) for o in b.objects]
    assert not (a.image == c.image).all()


def test_scene_arguments_fix_the_content():
    sc = make_scene(3, background="water", time="night", objects=[("red", "circle"), ("black", "square")])
    assert sc.attributes == {"background": "water", "time": "night"}
    assert sorted((o.color, o.shape) for o in sc.objects) == [("black", "square"), ("red", "circle")]
    with pytest.raises(ValueError):
        make_scene(3, objects=[("red", "circle"), ("red", "square")])


def test_tokenizer_keeps_world_words_whole():
    from diffugen.toyworld.train import build_tokenizer

    tok = build_tokenizer()
    for w in list(SHAPES) + list(COLORS) + list(BACKGROUNDS) + list(TIME_BRIGHTNESS) + ["hollow", "wide", "tall"]:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_missing_model_folder_is_a_clear_error(tmp_path):
    from diffugen.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="toy-world model"):
        load_toyworld_pipeline(tmp_path / "nowhere")


@pytest.mark.skipif(not model_available(), reason="the toy-world model folder diffugen/toyworld/model is not there")
def test_shipped_model_loads_offline_and_generates(monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_toyworld_pipeline()
    assert pipe.vae_scale_factor == 4
    out = pipe("a red circle on the road", num_inference_steps=4, height=64, width=64, output_type="np",
               generator=torch.Generator("cpu").manual_seed(0))
    image = out.images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()


@pytest.mark.skipif(not model_available(), reason="the toy-world model folder is not there")
@pytest.mark.parametrize("model", [[], ["--model", "builtin:toyworld-mmdit", "--heatmap-method", "concept_attention"]],
                         ids=["unet", "mmdit"])
def test_label_accuracy_bench_runs_end_to_end(tmp_path, model):
    """The accuracy bench (its targets live in BENCHMARKS.md, not here) runs on a few images."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "accuracy.json"
    bench = Path(__file__).resolve().parent.parent / "bench" / "label_accuracy.py"
    done = subprocess.run([sys.executable, str(bench), "--quick", "--out", str(out), *model], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["images"] == 8 and result["heatmap_method"] == (model[-1] if model else "cross_attention")
    assert 0 <= result["adherence"] <= 1 and 0 <= result["iou_drawn_mean"] <= 1 and 0 <= result["ap50_mean"] <= 1
    scores = result["scores"]  # txt2img and their img2img/inpaint children
    assert scores["images"] > 8 and scores["labels"] >= scores["right"] >= 0


@pytest.mark.parametrize("shape", ["star", "ring", "oval"])
def test_novel_shapes_are_drawn_recovered_and_told_apart(shape):
    for seed in range(10):
        sc = make_scene(seed, objects=[("yellow", shape)], min_size=18, max_size=24)
        (o,) = sc.objects
        assert (sc.image[o.mask] == COLORS["yellow"]).all() and o.mask.sum() > 60
        assert shape in sc.caption and shape not in VOCABULARY
        (r,) = recover_instances(sc.image, tolerance=1.0)
        assert (r.mask == o.mask).all()
        assert classify_shape(o.mask, ALL_LABELS) == shape


@pytest.mark.skipif(not model_available(), reason="the toy-world model folder is not there")
def test_textual_inversion_proof_study_runs_end_to_end(tmp_path):
    """The textual-inversion proof (studies/, targets in studies/REPORT.md) runs: examples → training →
    generation → judging."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ti.json"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "studies.textual_inversion_proof", "--quick", "--no-controls",
                           "--shape", "ring", "--out", str(out)],
                          cwd=root, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["token"] == "<ring>" and len(result["example_captions"]) == 8
    assert all("<ring>" in c for c in result["example_captions"])
    (run,) = result["runs"]
    assert run["images"] == 8 and 0 <= run["shape_rate"] <= run["object_present"] <= 1
    assert 0 <= run["shape_rate_contrast"] <= run["object_present"]
    assert sum(run["shapes_seen"].values()) == sum(run["shapes_seen_contrast"].values()) == round(8 * run["object_present"])


def test_hollow_shapes_are_squares_and_triangles_only_and_keep_the_other_draws():
    from diffugen.toyworld.scene import HOLLOW_SHAPES

    hollow = [o for seed in range(300) for o in make_scene(seed).objects if o.hollow]
    assert 0.1 < len(hollow) / sum(len(make_scene(s).objects) for s in range(300)) < 0.3
    assert {o.shape for o in hollow} == set(HOLLOW_SHAPES)
    for o in hollow:
        x, y, w, h = o.box
        filled = classify_shape(o.mask, ALL_LABELS)
        assert filled == o.kind and o.mask[y : y + h, x : x + w].mean() < 0.8  # a hole in the middle
    sc = make_scene(5, objects=[("red", "square", True), ("white", "circle")])
    assert [o.kind for o in sc.objects] == ["hollow square", "circle"] and "red hollow square" in sc.caption


def test_stretched_shapes_are_squares_and_triangles_twice_as_wide_as_tall_and_keep_the_other_draws():
    from diffugen.toyworld.scene import ASPECT, STRETCH_SHAPES

    assert not any(o.stretch for seed in range(100) for o in make_scene(seed).objects)  # off by default
    objs = [o for seed in range(300) for o in make_scene(seed, stretch_rate=0.3).objects]
    stretched = [o for o in objs if o.stretch]
    assert 0.1 < len(stretched) / len(objs) < 0.3 and {o.shape for o in stretched} == set(STRETCH_SHAPES)
    assert {o.stretch for o in stretched} == {"wide", "tall"} and not any(o.hollow for o in stretched)
    for o in stretched:
        x, y, w, h = o.box
        aspect = w / h if o.stretch == "wide" else h / w
        assert abs(aspect - ASPECT) < 0.25 and classify_shape(o.mask, ALL_LABELS) == o.kind
        assert classify_shape(o.mask) == o.shape  # the three-shape judge ignores the stretch
    # Seeds without a stretched object draw the same scene with stretching off (its own random stream).
    for seed in range(40):
        sc = make_scene(seed, stretch_rate=0.3)
        if not any(o.stretch for o in sc.objects):
            assert (sc.image == make_scene(seed, stretch_rate=0.0).image).all()
    sc = make_scene(5, objects=[("red", "triangle", False, "tall"), ("white", "oval")])
    assert [o.kind for o in sc.objects] == ["tall triangle", "oval"] and "red tall triangle" in sc.caption
    assert sc.objects[1].box[2] > 1.8 * sc.objects[1].box[3]  # an oval is a wide circle


def test_extra_shapes_and_round_holes_make_a_ring_a_hollow_circle_and_leave_the_default_world_alone():
    from scipy.ndimage import binary_fill_holes

    from diffugen.toyworld.scene import EXTRA_SHAPES, HOLLOW_SHAPES

    world = dict(shapes=SHAPES + EXTRA_SHAPES, hollow_shapes=HOLLOW_SHAPES + EXTRA_SHAPES, round_holes=True, hollow_rate=0.5)
    kinds = ALL_LABELS + EXTRA_SHAPES + tuple(f"hollow {s}" for s in EXTRA_SHAPES)
    objs = [o for seed in range(200) for o in make_scene(seed, **world).objects]
    assert {o.kind for o in objs} == {"circle"} | {f"{h}{s}" for s in SHAPES[1:] + EXTRA_SHAPES for h in ("", "hollow ")}
    for o in objs:
        assert classify_shape(o.mask, kinds, round_holes=True) == o.kind
        hole = binary_fill_holes(o.mask) & ~o.mask
        assert (hole.sum() >= 4) == o.hollow
    assert "purple hollow house" in make_scene(1, objects=[("purple", "house", True)], round_holes=True).caption
    # A hollow circle with a round hole is the ring of the textual-inversion proof, pixel for pixel but the rim.
    ring = make_scene(9, objects=[("red", "ring")], min_size=20, max_size=20).objects[0].mask
    hollow = make_scene(9, objects=[("red", "circle", True)], min_size=20, max_size=20, round_holes=True).objects[0].mask
    assert (ring ^ hollow).sum() <= 0.08 * ring.sum()
    for seed in range(40):  # round holes change the holes and nothing else; the default world has no extra shape
        plain, round_ = make_scene(seed), make_scene(seed, round_holes=True)
        assert [o.kind for o in plain.objects] == [o.kind for o in round_.objects]
        assert not {o.shape for o in plain.objects} & set(EXTRA_SHAPES)
        for a, b in zip(plain.objects, round_.objects):
            assert (a.mask == b.mask).all() != a.hollow


def test_finetune_from_a_missing_folder_is_refused_before_anything_is_written(tmp_path):
    from diffugen.cli import main

    state = tmp_path / "state"
    assert main(["toyworld", "train", "--init-from", str(tmp_path / "nowhere"), "--state", str(state),
                 "--out", str(tmp_path / "out")]) == 2
    assert not state.exists() and not (tmp_path / "out").exists()


@pytest.mark.skipif(not model_available(), reason="the toy-world model folder is not there")
def test_finetune_through_the_cli_runs_and_records_its_arguments(tmp_path):
    import json

    from diffugen.cli import main
    from diffugen.toyworld import MODEL_DIR

    state, out = tmp_path / "state", tmp_path / "out"
    assert main(["toyworld", "train", "--init-from", str(MODEL_DIR), "--state", str(state), "--out", str(out),
                 "--steps", "1", "--pool", "64", "--batch", "4", "--save-every", "0", "--stretch-rate", "0.6",
                 "--extra-shapes", "--round-holes"]) == 0
    recorded = json.loads((state / "args.json").read_text())
    assert recorded["init_from"] == str(MODEL_DIR) and recorded["stretch_rate"] == 0.6
    assert model_available(out)
    tokenizer = load_toyworld_pipeline(out).tokenizer
    assert [tokenizer.tokenize(w) for w in ("hollow", "diamond", "house")] == [["hollow"], ["diamond"], ["house"]]
    # The model folder records the world it learned (the judge of its images needs it); the shipped one: none.
    world = load_world(out)
    assert world["round_holes"] is True and world["stretch_rate"] == 0.6 and "house" in world["shapes"]
    assert load_world() == {} and make_scene(3, **world).objects  # make_scene takes it as it is


def test_training_world_rates_are_checked_and_a_pool_of_other_rates_is_not_reused(tmp_path, capsys):
    import torch

    from diffugen.toyworld import train

    with pytest.raises(SystemExit):
        train.parse_args(["--stretch-rate", "1.5"])
    assert "--stretch-rate: must be between 0 and 1, got 1.5" in capsys.readouterr().err
    vae, path = train.build_vae().eval(), tmp_path / "pool.pt"
    with torch.no_grad():
        plain, _, _ = train.latent_pool(vae, 0, 64, path)
        stretched, _, _ = train.latent_pool(vae, 0, 64, path, {"stretch_rate": 1.0})  # same size, other world: encoded again
        again, _, _ = train.latent_pool(vae, 0, 64, path, {"stretch_rate": 1.0})  # same world: read back
    assert not torch.equal(plain, stretched) and torch.equal(stretched, again)
    assert torch.load(path, weights_only=True)["world"] == {"stretch_rate": 1.0}
