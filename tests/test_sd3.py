"""The SD3/3.5 family end to end on builtin:tiny-sd3 (with and without T5): encoding as the pipeline's own,
word positions in the CLIP and T5 parts of the text sequence, joint-attention capture, the three tasks,
batching, resume, plain-diffusers images, loading and detection, and agreement with attention-map-diffusers."""

import json

import fiftyone as fo
import numpy as np
import pytest
import torch
from conftest import (
    amd_word_heatmaps,
    assert_batch_size_keeps_images_and_maps,
    assert_plain_diffusers_images_and_resume,
    small_config,
)
from PIL import Image

from diffugen.config import parse_config
from diffugen.generation.builtin import build_tiny_sd3_pipeline, tiny_t5_tokenizer
from diffugen.generation.family import family_of
from diffugen.generation.models import load_pipeline
from diffugen.generation.runner import generate

SD3 = "builtin:tiny-sd3"
ONE = {"view": ["rear"], "object": ["car"], "time": ["noon"]}
CONTEXT = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]


@pytest.fixture(scope="module")
def sd3():
    """A tiny SD3 pipeline of this module's own (the runner's process-wide cached one stays untouched)."""
    pipe = build_tiny_sd3_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3_no_t5():
    pipe = build_tiny_sd3_pipeline(with_t5=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _same_weights(a, b) -> None:
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


# ---- the model and its encoding ------------------------------------------------------------------
def test_tiny_sd3_is_a_complete_sd3_pipeline(sd3, sd3_no_t5, tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

    assert type(sd3) is StableDiffusion3Pipeline and family_of(sd3).name == family_of(sd3_no_t5).name == "sd3"
    assert type(sd3.text_encoder) is type(sd3.text_encoder_2) is CLIPTextModelWithProjection
    assert type(sd3.text_encoder_3) is T5EncoderModel and sd3_no_t5.text_encoder_3 is None
    assert isinstance(sd3.transformer, SD3Transformer2DModel) and sd3.transformer.config.dual_attention_layers == (0,)
    _same_weights(sd3, build_tiny_sd3_pipeline())  # fixed seeds
    # The T5 tokenizer saves and reloads offline, splitting as before.
    tok = tiny_t5_tokenizer()
    tok.save_pretrained(tmp_path / "t5")
    again = T5TokenizerFast.from_pretrained(tmp_path / "t5")
    prompt = "a red scooter, on the road"
    assert again(prompt).input_ids == tok(prompt).input_ids
    assert tok.convert_ids_to_tokens(tok(prompt).input_ids)[:3] == ["▁a", "▁red", "▁s"]  # unknown words: characters


def test_task_pipelines_share_weights(sd3):
    for task, name in (("txt2img", "StableDiffusion3Pipeline"), ("img2img", "StableDiffusion3Img2ImgPipeline"),
                       ("inpaint", "StableDiffusion3InpaintPipeline")):
        derived = family_of(sd3).task_pipeline(sd3, task)
        assert type(derived).__name__ == name and derived is not sd3
        assert derived.transformer is sd3.transformer and derived.vae is sd3.vae
        assert derived.text_encoder_3 is sd3.text_encoder_3


@pytest.mark.parametrize("with_t5", [True, False])
def test_encode_is_the_pipelines_own_without_emphasis(sd3, sd3_no_t5, with_t5):
    pipe = sd3 if with_t5 else sd3_no_t5
    family = family_of(pipe)
    prompts = ["a red car on a road", "a bus near a tree at night"]
    for negative in ("", "blurry, low quality"):
        ours = family.encode(pipe, prompts, negative).pipeline_kwargs
        theirs = pipe.encode_prompt(prompts, None, None, device=pipe.device, negative_prompt=negative or None)
        for name, ref in zip(CONTEXT, theirs):
            assert torch.equal(ours[name], ref), (name, negative)
    assert ours["prompt_embeds"].shape[1] == 77 + 256  # CLIP positions, then T5's (zeros without T5)


def test_word_positions_cover_clip_and_t5_tokens_and_emphasis_acts(sd3, sd3_no_t5):
    family = family_of(sd3)
    plain = family.encode(sd3, ["a red car on a road"], "")
    stressed = family.encode(sd3, ["a red car++ on a road"], "")
    car = family.word_positions(sd3, stressed.prompts[0], "car")
    assert car == family.word_positions(sd3, plain.prompts[0], "car") == [3, 77 + 2]  # after <start>; T5 has none
    a, b = plain.pipeline_kwargs["prompt_embeds"][0], stressed.pipeline_kwargs["prompt_embeds"][0]
    for position in car:  # the CLIP part and the T5 part both carry the weight
        assert not torch.allclose(a[position], b[position])
    scooter = family.word_positions(sd3, family.encode(sd3, ["a scooter on a road"], "").prompts[0], "scooter")
    clip_part = [p for p in scooter if p < 77]
    assert len(clip_part) == len(sd3.tokenizer.tokenize("scooter")) > 1
    assert len(scooter) - len(clip_part) == len(sd3.tokenizer_3.tokenize("scooter")) > 1
    no_t5 = family.word_positions(sd3_no_t5, family.encode(sd3_no_t5, ["a red car"], "").prompts[0], "car")
    assert no_t5 == [3]
    twice = family.encode(sd3, ["a red car near a blue car"], "").prompts[0]
    assert family.word_occurrences(sd3, twice, "car") == [[3, 77 + 2], [7, 77 + 6]]  # CLIP and T5 tokens together


def test_capture_leaves_images_bit_identical_and_restores_processors(sd3):
    family = family_of(sd3)
    encoded = family.encode(sd3, ["a red car on a road", "a bus on a road"], "")
    positions = [family.word_positions(sd3, e, w) for e, w in zip(encoded.prompts, ["car", "bus"])]

    def run():
        gens = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
        return sd3(**encoded.pipeline_kwargs, generator=gens, num_inference_steps=2, height=64, width=112,
                   output_type="np").images

    before = sd3.transformer.attn_processors
    bare = run()
    with torch.no_grad(), family.capture(sd3, refine_power=1) as collector:
        assert all(sd3.transformer.attn_processors[n] is not before[n] for n in before)  # attn2 too
        collector.reset(2, sorted({t for p in positions for t in p}), family.latent_size(sd3, 64, 112))
        captured = run()
        maps = collector.word_heatmaps([[p] for p in positions], (64, 112))
    assert np.array_equal(bare, captured)
    assert collector.latent_size == (4, 7) and collector.refine_grid() == (4, 7)
    assert sorted(collector.maps) == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor"]
    assert [tuple(m[0].shape) for m in maps] == [(64, 112)] * 2 and all(float(m[0].max()) == 1.0 for m in maps)
    after = sd3.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


# ---- generate: the three tasks, plain diffusers, batching, resume --------------------------------
def test_generate_all_tasks_gives_word_heatmaps_and_daam_labels(tmp_path, dataset_name):
    cfg = parse_config(small_config(
        dataset_name, tmp_path / "out", model=SD3, steps=2, seeds=[11],
        img2img={"attributes": {"time": ["night"]}, "strength": 0.7},
        inpaint={"replacements": {"car": ["red suv"], "bus": ["white van"]}},
    ))
    summary = generate(cfg)
    assert [(t.task, t.made) for t in summary.tasks][:2] == [("txt2img", 4), ("img2img", 4)]
    ds = fo.load_dataset(dataset_name)
    assert ds.count_values("task").get("inpaint", 0) == summary.tasks[2].made > 0
    for s in ds:
        assert s.model == SD3 and Image.open(s.filepath).size == (96, 64)
        assert len(s.word_heatmaps) == len(s.class_words) == 1
        assert np.asarray(Image.open(s.word_heatmaps[0].map_path)).max() == 255
        assert s.daam_segmentation.get_mask().shape == (64, 96)
    child = ds.match(fo.ViewField("task") == "img2img").first()
    assert ds[child.parent_id].task == "txt2img" and child.attributes.time == "night"
    painted = ds.match(fo.ViewField("task") == "inpaint").first()
    changed = (np.asarray(Image.open(painted.filepath)) != np.asarray(Image.open(ds[painted.parent_id].filepath))).any(-1)
    assert changed.any() and not changed.all()


def test_txt2img_images_are_the_plain_diffusers_pipelines_and_rerun_resumes(tmp_path, dataset_name):
    """Same prompt, CPU-generator seed, steps, guidance and size; the pipeline's defaults for the rest."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=SD3, batch_size=1, width=80, height=112,
                                    seeds=[11]))
    assert_plain_diffusers_images_and_resume(cfg, build_tiny_sd3_pipeline(), 112, 80)


def test_batch_size_does_not_change_images_or_labels(tmp_path):
    assert_batch_size_keeps_images_and_maps(SD3, tmp_path)


# ---- loading and family detection ----------------------------------------------------------------
def test_saved_folder_without_t5_loads_detects_and_generates(sd3_no_t5, tmp_path, dataset_name):
    folder = tmp_path / "tiny-sd3"
    sd3_no_t5.save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    loaded = load_pipeline(str(folder))
    assert type(loaded).__name__ == "StableDiffusion3Pipeline" and loaded.text_encoder_3 is None
    assert family_of(loaded).name == "sd3"
    assert family_of(load_pipeline(str(folder), model_family="sd3")).name == "sd3"
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(folder), attributes=ONE, seeds=[5],
                                    model_family="sd3", steps=2))
    assert generate(cfg).tasks[0].made == 1
    s = fo.load_dataset(dataset_name).first()
    assert s.word_heatmaps[0].label == "car" and s.daam_segmentation is not None


# ---- the oracle: attention-map-diffusers' image->text maps ----------------------------------------
def test_heatmaps_agree_with_attention_map_diffusers(sd3):
    amd = pytest.importorskip("attention_map_diffusers", reason="attention-map-diffusers==1.0.0 is not installed")
    family = family_of(sd3)
    prompts, words = ["a red car near a scooter on a road", "a bus on a road"], ["scooter", "bus"]
    encoded = family.encode(sd3, prompts, "")
    positions = [family.word_positions(sd3, e, w) for e, w in zip(encoded.prompts, words)]

    def run():
        gens = [torch.Generator("cpu").manual_seed(s) for s in (1, 2)]
        return sd3(**encoded.pipeline_kwargs, generator=gens, num_inference_steps=3, height=64, width=96,
                   output_type="np").images

    with torch.no_grad(), family.capture(sd3) as collector:
        collector.reset(2, sorted({t for p in positions for t in p}), family.latent_size(sd3, 64, 96))
        run()
        maps = collector.word_heatmaps([[p] for p in positions], (64, 96))
    with torch.no_grad(), amd.AttentionCapture(sd3, relations=["image->text"], timesteps="all", heads="mean") as cap:
        run()
    theirs = amd_word_heatmaps(cap.compute().records, positions, (4, 6), (64, 96))
    for i, word in enumerate(words):
        r = np.corrcoef(maps[i][0].numpy().ravel(), theirs[i].numpy().ravel())[0, 1]
        print(f"tiny SD3 '{word}': Pearson r = {r:.6f}")
        assert r >= 0.99, word
