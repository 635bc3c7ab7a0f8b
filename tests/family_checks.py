"""The checks every model family's tests run on its tiny pipeline (``import family_checks as check``): oracle
agreement, capture that leaves images unchanged, batch-size invariance, plain-diffusers images and resume, all three
tasks labeled, shards, and a save/reload round trip."""

from pathlib import Path
from typing import Sequence

from conftest import small_config


def oracle_agreement(pipe, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Pearson r, per word, between our heatmap and attention-map-diffusers' ``image->text`` one under the same
    aggregation, for two prompts (64×96, 3 steps, the pipeline's own CFG or none).

    Theirs: its records (``heads="mean"``, ``timesteps="all"``; each ``(batch, 1, image_tokens, text_tokens)``,
    the last rows the conditional prompts; a second transformer call per step, the unconditional one, left out) summed
    over layers and steps, clamped at 0, averaged over the word's
    tokens, bicubic-upsampled, min-max normalised. ``layers``: only the layers whose name (theirs:
    ``transformer.<name>``) starts with one of these, on both sides (it does not record every layer we do).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from attention_map_diffusers import AttentionCapture

    from diffugen.generation.family import family_of

    family = family_of(pipe)
    prompts, words = ["a red car near a scooter on a road", "a bus on a road"], ["scooter", "bus"]
    encoded = family.encode(pipe, prompts, "")
    positions = [family.word_positions(pipe, e, w) for e, w in zip(encoded.prompts, words)]
    grid = family.latent_size(pipe, 64, 96)

    def run():
        gens = [torch.Generator("cpu").manual_seed(s) for s in (1, 2)]
        pipe(**encoded.pipeline_kwargs, generator=gens, num_inference_steps=3, height=64, width=96, output_type="np")

    def chosen(name: str) -> bool:
        return layers is None or name.removeprefix("transformer.").startswith(tuple(layers))

    with torch.no_grad(), family.capture(pipe) as collector:
        collector.reset(2, sorted({t for p in positions for t in p}), grid)
        run()
    with torch.no_grad(), AttentionCapture(pipe, relations=["image->text"], timesteps="all", heads="mean") as cap:
        run()
    # A pipeline that runs its unconditional half as a second transformer call (FLUX.2 [klein] Base) makes
    # records with denoiser_call_index 1: only the first call's are the conditional prompts'.
    records = [r for r in cap.compute().records if r.relation == "image->text" and chosen(r.layer_id)
               and r.metadata.get("denoiser_call_index", 0) == 0]
    assert records, "attention-map-diffusers recorded no image->text attention"
    total = sum(r.data[:, 0].float() for r in records)  # (batch, image_tokens, text_tokens)
    collector.maps = {name: m for name, m in collector.maps.items() if chosen(name)}
    ours = collector.word_heatmaps([[p] for p in positions], (64, 96))
    agreement = {}
    for i, (word, idxs) in enumerate(zip(words, positions)):
        m = total[total.shape[0] - len(prompts) + i][:, idxs].T.reshape(len(idxs), *grid).clamp(min=0).mean(0)
        m = F.interpolate(m[None, None], size=(64, 96), mode="bicubic")[0, 0]
        theirs = (m - m.min()) / (m.max() - m.min())
        agreement[word] = float(np.corrcoef(ours[i][0].numpy().ravel(), theirs.numpy().ravel())[0, 1])
    return agreement


def assert_batch_size_keeps_images_and_maps(model: str, root: Path, steps: int = 2, **overrides) -> None:
    """Three prompts made one by one and as one batch of 3 give the same images and word maps (±1 of 255);
    ``overrides``: config values (e.g. ``heatmap_method``)."""
    import numpy as np

    from diffugen.config import parse_config
    from diffugen.generation.family import family_of
    from diffugen.generation.planner import plan
    from diffugen.generation.runner import Runner

    one = parse_config(small_config("b1", root / "b1", model=model, batch_size=1, steps=steps, **overrides))
    many = parse_config(small_config("b3", root / "b3", model=model, batch_size=3, steps=steps, **overrides))
    items = plan(one, "txt2img")[:3]
    g1, g3 = Runner(one), Runner(many)
    pipe = g1.pipeline("txt2img")
    with family_of(pipe).capture(pipe, method=one.heatmap_method) as col:
        singles = [g1.run_batch(pipe, col, "txt2img", [it])[:3] for it in items]
        images3, maps3, found3 = g3.run_batch(pipe, col, "txt2img", items)[:3]
    for k, (img1, maps1, found1) in enumerate(singles):
        assert found1[0] == found3[k] and maps1[0]
        assert np.abs(img1[0].astype(int) - images3[k].astype(int)).max() <= 1
        for m1, m3 in zip(maps1[0], maps3[k]):
            assert np.abs(m1.astype(int) - m3.astype(int)).max() <= 1


def assert_plain_diffusers_images_and_resume(cfg, plain, height: int, width: int, **call) -> None:
    """``generate(cfg)`` (txt2img) makes what ``plain`` (a diffusers pipeline) makes for each sample's prompt,
    CPU-generator seed, steps, guidance and size (a guidance the config leaves unset is left to the pipeline;
    ``call``: more arguments for ``plain``); a rerun makes nothing, and remakes a deleted sample."""
    import fiftyone as fo
    import numpy as np
    import torch
    from PIL import Image

    from diffugen.generation.runner import generate

    generate(cfg)
    plain.set_progress_bar_config(disable=True)
    ds = fo.load_dataset(cfg.dataset_name)
    for s in ds:
        out = plain(prompt=s.prompt, generator=torch.Generator("cpu").manual_seed(s.seed), num_inference_steps=s.steps,
                    height=height, width=width, output_type="np",
                    **({} if cfg.guidance_scale is None else {"guidance_scale": cfg.guidance_scale}), **call)
        image = (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)
        assert np.array_equal(image, np.asarray(Image.open(s.filepath))), s.prompt
    keys = sorted(ds.values("key"))
    assert generate(cfg).tasks[0].made == 0
    ds.delete_samples(ds.limit(1))
    assert generate(cfg).tasks[0].made == 1 and sorted(ds.values("key")) == keys


def assert_all_tasks_labeled(model: str, root: Path, name: str, inpaint_model: str | None = None, **overrides) -> None:
    """txt2img → img2img → inpaint with ``model`` (4 prompts, 96×64, 2 steps; ``inpaint_model``: the inpaint
    section's own model): every sample has its image, one word heatmap per class word and DAAM labels; img2img
    children have their new attribute; inpaint changes some pixels of its parent, not all. ``overrides``: config
    values."""
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    from diffugen.config import parse_config
    from diffugen.generation.runner import generate

    cfg = parse_config(small_config(
        name, root / "out", model=model, steps=2, seeds=[11],
        img2img={"attributes": {"time": ["night"]}, "strength": 0.7},
        inpaint={"replacements": {"car": ["red suv"], "bus": ["white van"]},
                 **({"model": inpaint_model} if inpaint_model else {})}, **overrides,
    ))
    summary = generate(cfg)
    assert [(t.task, t.made) for t in summary.tasks][:2] == [("txt2img", 4), ("img2img", 4)]
    ds = fo.load_dataset(name)
    assert ds.count_values("task").get("inpaint", 0) == summary.tasks[2].made > 0
    for s in ds:
        assert s.model == (inpaint_model or model if s.task == "inpaint" else model)
        assert Image.open(s.filepath).size == (96, 64)
        assert len(s.word_heatmaps) == len(s.class_words) == 1
        assert np.asarray(Image.open(s.word_heatmaps[0].map_path)).max() == 255
        assert s.daam_segmentation.get_mask().shape == (64, 96)
    child = ds.match(fo.ViewField("task") == "img2img").first()
    assert ds[child.parent_id].task == "txt2img" and child.attributes.time == "night"
    painted = ds.match(fo.ViewField("task") == "inpaint").first()
    changed = (np.asarray(Image.open(painted.filepath)) != np.asarray(Image.open(ds[painted.parent_id].filepath))).any(-1)
    assert changed.any() and not changed.all()


def assert_capture_is_invisible(pipe, refine_power: int = 1, size: tuple[int, int] = (64, 112)):
    """Two prompts ("car", "bus") made bare and inside the family's capture give bit-identical images, every
    attention processor of the transformer is replaced during the capture and restored after, and each word
    gets a ``size`` heatmap peaking at 1. Returns the collector, for the family's own checks."""
    import numpy as np
    import torch

    from diffugen.generation.family import family_of

    family, (height, width) = family_of(pipe), size
    encoded = family.encode(pipe, ["a red car on a road", "a bus on a road"], "")
    positions = [family.word_positions(pipe, e, w) for e, w in zip(encoded.prompts, ["car", "bus"])]

    def run():
        gens = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
        return pipe(**encoded.pipeline_kwargs, generator=gens, num_inference_steps=2, height=height, width=width,
                    output_type="np").images

    before = pipe.transformer.attn_processors
    bare = run()
    with torch.no_grad(), family.capture(pipe, refine_power=refine_power) as collector:
        assert all(pipe.transformer.attn_processors[n] is not before[n] for n in before)
        collector.reset(2, sorted({t for p in positions for t in p}), family.latent_size(pipe, height, width))
        captured = run()
        maps = collector.word_heatmaps([[p] for p in positions], size)
    assert np.array_equal(bare, captured)
    assert [tuple(m[0].shape) for m in maps] == [size] * 2 and all(float(m[0].max()) == 1.0 for m in maps)
    after = pipe.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    return collector


def saved_and_loaded(pipe, folder: Path, family: str):
    """``pipe`` saved as a diffusers folder and loaded back by DiffuGen, offline: its ``model_index.json`` names its
    class, it loads as that class, of ``family``, and ``model_family`` set to it loads it too. Returns the
    ``(model_index, loaded pipeline)``."""
    import json

    from diffugen.generation.family import family_of
    from diffugen.generation.models import load_pipeline

    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    loaded = load_pipeline(str(folder))
    assert index["_class_name"] == type(pipe).__name__ == type(loaded).__name__ and family_of(loaded).name == family
    assert type(load_pipeline(str(folder), model_family=family)) is type(pipe)
    return index, loaded


def assert_shards_make_each_image_once(model: str, root: Path, name: str) -> None:
    """Two shards of a 4-image txt2img run make 2 images each, disjoint, the whole plan between them."""
    import fiftyone as fo

    from diffugen.config import parse_config
    from diffugen.generation.planner import plan
    from diffugen.generation.runner import generate

    cfg = parse_config(small_config(name, root / "out", model=model, steps=2, batch_size=1, seeds=[11]))
    made = [generate(cfg, tasks=["txt2img"], shard=(i, 2)).tasks[0].made for i in (0, 1)]
    assert made == [2, 2] and generate(cfg, tasks=["txt2img"], shard=(0, 2)).tasks[0].made == 0
    assert sorted(fo.load_dataset(name).values("key")) == sorted(it.key for it in plan(cfg, "txt2img"))
