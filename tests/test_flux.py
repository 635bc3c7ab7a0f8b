"""The FLUX.1 family end to end on builtin:tiny-flux: encoding as the pipeline's own, word positions in the T5
sequence, joint-attention capture over double- and single-stream blocks, the three tasks, a batch that is all
conditional (no CFG), resume, plain-diffusers images, loading and detection, and agreement with
attention-map-diffusers."""

import json

import fiftyone as fo
import pytest
import torch
import family_checks as check
from conftest import small_config
from diffusers import FluxFillPipeline

from diffugen.config import parse_config
from diffugen.errors import DiffuGenError
from diffugen.generation.builtin import build_tiny_flux_pipeline
from diffugen.generation.family import family_of
from diffugen.generation.models import load_pipeline
from diffugen.generation.runner import generate

FLUX = "builtin:tiny-flux"
DOUBLE, SINGLE = "transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"

ONE = {"view": ["rear"], "object": ["car"], "time": ["noon"]}
TWO = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}


@pytest.fixture(scope="module")
def flux():
    """A tiny FLUX pipeline of this module's own (the runner's process-wide cached one stays untouched)."""
    pipe = build_tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- the model and its encoding ------------------------------------------------------------------
def test_tiny_flux_is_a_complete_flux_pipeline(flux):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    assert type(flux) is FluxPipeline and family_of(flux).name == "flux"
    assert type(flux.text_encoder) is CLIPTextModel and type(flux.text_encoder_2) is T5EncoderModel
    assert isinstance(flux.transformer, FluxTransformer2DModel) and flux.transformer.config.guidance_embeds
    again = build_tiny_flux_pipeline()  # fixed seeds
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(flux, name).state_dict(), getattr(again, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    for task, cls in (("txt2img", "FluxPipeline"), ("img2img", "FluxImg2ImgPipeline"), ("inpaint", "FluxInpaintPipeline")):
        derived = family_of(flux).task_pipeline(flux, task)
        assert type(derived).__name__ == cls and derived is not flux and derived.transformer is flux.transformer


def test_encode_is_the_pipelines_own_and_words_are_t5_tokens(flux):
    family = family_of(flux)
    prompts = ["a red car on a road", "a bus near a tree at night"]
    ours = family.encode(flux, prompts, "blurry")  # guidance-distilled: no negative prompt is passed
    embeds, pooled, _ = flux.encode_prompt(prompts, None, device=flux.device)
    assert ours.pipeline_kwargs.keys() == {"prompt_embeds", "pooled_prompt_embeds"}
    assert torch.equal(ours.pipeline_kwargs["prompt_embeds"], embeds) and embeds.shape[1] == 512
    assert torch.equal(ours.pipeline_kwargs["pooled_prompt_embeds"], pooled)
    assert family.word_positions(flux, ours.prompts[0], "car") == [2]  # T5 has no start token
    stressed = family.encode(flux, ["a red car++ on a road"], "")
    assert family.word_positions(flux, stressed.prompts[0], "car") == [2]
    a, b = ours.pipeline_kwargs["prompt_embeds"][0], stressed.pipeline_kwargs["prompt_embeds"][0]
    assert not torch.allclose(a[2], b[2])
    assert torch.equal(ours.pipeline_kwargs["pooled_prompt_embeds"][0], stressed.pipeline_kwargs["pooled_prompt_embeds"][0])
    scooter = family.word_positions(flux, family.encode(flux, ["a scooter"], "").prompts[0], "scooter")
    assert scooter == list(range(1, 1 + len(flux.tokenizer_2.tokenize("scooter")))) and len(scooter) > 1


def test_capture_leaves_images_bit_identical_and_restores_processors(flux):
    collector = check.assert_capture_is_invisible(flux)
    assert collector.latent_size == (4, 7) and sorted(collector.maps) == [SINGLE, DOUBLE]
    assert collector.maps[DOUBLE].shape == (2, 2, 2, 4, 7)  # (batch: all conditional, heads, tokens, h, w)


def test_refinement_at_1024px_runs_on_a_32x32_grid_and_keeps_images(flux):
    """At FLUX's own 1024² the token grid is 64×64: the refinement pools it to 32×32 blocks (not skipped, as a
    grid over 1,024 positions was), and the images stay bit-identical."""
    collector = check.assert_capture_is_invisible(flux, size=(1024, 1024))
    assert collector.latent_size == (64, 64) and collector.refine_grid() == (32, 32)
    refined = collector.token_heatmaps()
    collector.refine_power = 0
    assert not torch.allclose(refined, collector.token_heatmaps())


# ---- generate: the three tasks, plain diffusers, batching, resume --------------------------------
def test_generate_all_tasks_gives_word_heatmaps_and_daam_labels(tmp_path, dataset_name):
    check.assert_all_tasks_labeled(FLUX, tmp_path, dataset_name)


def test_txt2img_images_are_the_plain_diffusers_pipelines_and_rerun_resumes(tmp_path, dataset_name):
    """Same prompt, CPU-generator seed, steps and size; the pipeline's defaults for the rest, the distilled
    guidance among them (3.5, recorded on the samples)."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=FLUX, batch_size=1, width=80, height=112,
                                    seeds=[11], steps=2, attributes=TWO))
    assert cfg.guidance_scale is None
    check.assert_plain_diffusers_images_and_resume(cfg, build_tiny_flux_pipeline(), 112, 80)
    assert set(fo.load_dataset(dataset_name).values("guidance_scale")) == {3.5}


def test_config_max_sequence_length_is_the_t5_length_the_pipeline_is_given(flux, tmp_path, dataset_name):
    """``max_sequence_length: 24`` (FLUX.1 schnell's users set 256): the images are the plain pipeline's with
    ``max_sequence_length=24``, not its default 512's, and the words are still found in the shorter sequence."""
    batch = family_of(flux).encode(flux, ["a rear view of a car at noon"], "", 24)
    assert batch.pipeline_kwargs["prompt_embeds"].shape[1] == 24 == batch.context_limits["T5"]
    assert family_of(flux).word_positions(flux, batch.prompts[0], "car")
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=FLUX, batch_size=1, width=64, height=64,
                                    seeds=[11], steps=2, attributes=ONE, max_sequence_length=24))
    check.assert_plain_diffusers_images_and_resume(cfg, build_tiny_flux_pipeline(), 64, 64, max_sequence_length=24)
    sample = fo.load_dataset(dataset_name).first()
    assert len(sample.word_heatmaps) == 1 and sample.daam_detections.detections


def test_max_sequence_length_is_refused_for_a_model_without_a_long_sequence(tmp_path, dataset_name):
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", max_sequence_length=256))
    with pytest.raises(DiffuGenError, match=r"max_sequence_length 256: model builtin:tiny is a 'sd' model, whose "
                                            r"prompts have no long text sequence; it applies to \['sd3', 'flux', 'flux2'\]"):
        generate(cfg)
    assert not fo.dataset_exists(dataset_name) and not (tmp_path / "out").exists()


def test_shards_make_each_image_once(tmp_path, dataset_name):
    check.assert_shards_make_each_image_once(FLUX, tmp_path, dataset_name)


def test_batch_size_does_not_change_images_or_labels(tmp_path):
    """No CFG: every row of the batch is a conditional prompt, and each keeps its own maps."""
    check.assert_batch_size_keeps_images_and_maps(FLUX, tmp_path)


def test_saved_folder_loads_and_is_detected(flux, tmp_path):
    _, loaded = check.saved_and_loaded(flux, tmp_path / "tiny-flux", "flux")
    again = loaded.tokenizer_2("a red scooter").input_ids
    assert again == flux.tokenizer_2("a red scooter").input_ids  # the T5 tokenizer reloads offline


def test_single_file_is_detected_by_its_keys_and_needs_its_layout_offline(tmp_path):
    """FLUX files (often the transformer alone) load through FluxPipeline.from_single_file with checkpoint_config;
    diffusers' FLUX conversion assumes FLUX.1's full width (3072), so a tiny one cannot be converted here."""
    from safetensors.torch import save_file

    from diffugen.errors import ModelNotFoundError
    from diffugen.generation.models import checkpoint_family

    for name, key in (("flux", "double_blocks.0.img_attn.norm.key_norm.scale"),
                      ("prefixed", "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale")):
        save_file({key: torch.ones(2)}, str(tmp_path / f"{name}.safetensors"))
        assert checkpoint_family(tmp_path / f"{name}.safetensors").name == "flux"
    with pytest.raises(ModelNotFoundError, match=r"(?s)FluxPipeline checkpoint.*set 'checkpoint_config'"):
        load_pipeline(str(tmp_path / "flux.safetensors"))


# ---- the oracle: attention-map-diffusers' image->text maps ----------------------------------------
def test_heatmaps_agree_with_attention_map_diffusers(flux):
    """attention-map-diffusers records the double-stream blocks' image->text attention (not the single-stream
    ones'): ours over the same layers, aggregated alike, must agree."""
    pytest.importorskip("attention_map_diffusers", reason="attention-map-diffusers==1.0.0 is not installed")
    agreement = check.oracle_agreement(flux, layers=["transformer_blocks."])
    print(f"tiny FLUX: Pearson r per word {agreement}")
    assert min(agreement.values()) >= 0.99, agreement


# ---- FLUX Fill: inpainting with the masked image and mask as input channels -----------------------------
def test_fill_model_inpaints_the_children_of_another_model(tmp_path, dataset_name):
    """txt2img with tiny FLUX, inpaint with tiny FLUX Fill (saved and reloaded as a folder: its model_index
    names FluxFillPipeline): FluxFillPipeline makes the children, with its own default guidance (30); only
    masked pixels change."""
    import numpy as np
    from PIL import Image

    from diffugen.generation.runner import Runner

    folder = tmp_path / "tiny-flux-fill"
    fill = build_tiny_flux_pipeline(fill=True)
    FluxFillPipeline.from_pipe(fill).save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxFillPipeline"
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=FLUX, steps=2, seeds=[11], attributes=TWO,
                                    inpaint={"model": str(folder), "replacements": {"car": ["red suv"]},
                                             "strength": 1.0}))
    assert type(Runner(cfg).pipeline("inpaint")).__name__ == "FluxFillPipeline"
    summary = generate(cfg)
    assert summary.tasks[1].task == "inpaint" and summary.tasks[1].made >= 1
    ds = fo.load_dataset(dataset_name)
    for child in ds.match(fo.ViewField("task") == "inpaint"):
        assert child.model == str(folder) and child.guidance_scale == 30.0 and child.inpaint_replaced == "car"
        assert len(child.word_heatmaps) == len(child.class_words)
        painted, parent = np.asarray(Image.open(child.filepath)), np.asarray(Image.open(ds[child.parent_id].filepath))
        changed = (painted != parent).any(-1)
        assert changed.any() and not changed.all()


def test_fill_model_refuses_txt2img_before_writing(tmp_path, dataset_name):
    from diffugen.errors import DiffuGenError

    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model="builtin:tiny-flux-fill", steps=2))
    with pytest.raises(DiffuGenError, match=r"txt2img: a FLUX Fill model .*288 input channels\) only inpaints"):
        generate(cfg)
    assert not fo.dataset_exists(dataset_name)


# ---- FLUX Kontext: editing with the parent as the reference image --------------------------------------
def test_kontext_model_edits_children_as_its_own_pipeline_does(tmp_path, dataset_name):
    """A folder whose model_index names FluxKontextPipeline loads as one; img2img children are the plain
    FluxKontextPipeline's edit of the parent (the reference image) with the child's prompt (no strength), and
    inpaint uses FluxKontextInpaintPipeline; every sample has its word heatmaps."""
    import numpy as np
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from diffugen.generation.runner import Runner

    folder = tmp_path / "tiny-flux-kontext"
    FluxKontextPipeline.from_pipe(build_tiny_flux_pipeline()).save_pretrained(folder)
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(folder), steps=2, seeds=[11],
                                    attributes=ONE, img2img={"attributes": {"time": ["night"]}},
                                    inpaint={"replacements": {"car": ["red suv"]}}))
    runner = Runner(cfg)
    assert [type(runner.pipeline(t)).__name__ for t in cfg.tasks()] == [
        "FluxKontextPipeline", "FluxKontextPipeline", "FluxKontextInpaintPipeline"]
    summary = generate(cfg, runner=runner)
    assert [t.made for t in summary.tasks][:2] == [1, 1]
    ds = fo.load_dataset(dataset_name)
    assert all(len(s.word_heatmaps) == len(s.class_words) == 1 for s in ds)
    child = ds.match(fo.ViewField("task") == "img2img").first()
    plain = load_pipeline(str(folder))
    plain.set_progress_bar_config(disable=True)
    out = plain(image=Image.open(ds[child.parent_id].filepath), prompt=child.prompt, height=64, width=96, max_area=64 * 96,
                generator=torch.Generator("cpu").manual_seed(child.seed), num_inference_steps=2, output_type="np")
    image = (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)
    assert "night" in child.prompt and np.array_equal(image, np.asarray(Image.open(child.filepath)))
