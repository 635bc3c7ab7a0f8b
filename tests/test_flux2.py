"""The FLUX.2 [klein] family end to end on builtin:tiny-flux2: a Qwen3 tokenizer built in code (saved and reloaded
offline), encoding as the pipeline's own, word positions in the chat-formatted sequence, joint-attention capture over
double- and single-stream blocks (paused on the base model's unconditional calls), the three tasks (img2img an edit of
the parent), plain-diffusers images, batching, shards, resume, loading and detection, and agreement with
attention-map-diffusers."""


import fiftyone as fo
import numpy as np
import pytest
import torch
import family_checks as check
from conftest import small_config

from diffugen.config import parse_config
from diffugen.generation.builtin import TINY_WORDS, build_tiny_flux2_pipeline
from diffugen.generation.family import family_of
from diffugen.generation.models import load_pipeline

FLUX2 = "builtin:tiny-flux2"
DOUBLE, SINGLE = "transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"
TWO = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}


@pytest.fixture(scope="module")
def flux2(one_torch_thread):
    """A tiny FLUX.2 [klein] Base pipeline of this module's own (the runner's cached one stays untouched)."""
    pipe = build_tiny_flux2_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- the model, its tokenizer and its encoding ----------------------------------------------------------
def test_tiny_flux2_is_a_complete_klein_pipeline(flux2):
    from diffusers import (
        AutoencoderKLFlux2,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

    assert type(flux2) is Flux2KleinPipeline and family_of(flux2).name == "flux2" and not flux2.config.is_distilled
    assert type(flux2.text_encoder) is Qwen3ForCausalLM and isinstance(flux2.tokenizer, Qwen2TokenizerFast)
    assert isinstance(flux2.transformer, Flux2Transformer2DModel) and isinstance(flux2.vae, AutoencoderKLFlux2)
    assert flux2.text_encoder.config.num_hidden_layers + 1 > 27 and flux2.vae_scale_factor == 8  # layers (9, 18, 27)
    again = build_tiny_flux2_pipeline()  # fixed seeds
    for name in ("transformer", "vae", "text_encoder"):
        sa, sb = getattr(flux2, name).state_dict(), getattr(again, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    for task, cls in (("txt2img", "Flux2KleinPipeline"), ("img2img", "Flux2KleinPipeline"),
                      ("inpaint", "Flux2KleinInpaintPipeline")):
        derived = family_of(flux2).task_pipeline(flux2, task)
        assert type(derived).__name__ == cls and derived is not flux2 and derived.transformer is flux2.transformer
        assert family_of(derived).name == "flux2" and not derived.config.is_distilled
    distilled = build_tiny_flux2_pipeline(distilled=True)
    assert family_of(distilled).task_pipeline(distilled, "inpaint").config.is_distilled


def test_tokenizer_is_qwens_byte_level_bpe_with_its_chat_format(flux2):
    tok = flux2.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "a red car"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na red car<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.convert_ids_to_tokens(tok(text).input_ids) == [
        "<|im_start|>", "user", "Ċ", "a", "Ġred", "Ġcar", "<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ",
        "<think>", "ĊĊ", "</think>", "ĊĊ"]
    assert all(len(tok(f" {w}").input_ids) == 1 == len(tok(w).input_ids) for w in TINY_WORDS)
    assert len(tok(" scooter").input_ids) > 1 and tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.decode(tok("A Scooter, 3 cars").input_ids) == "A Scooter, 3 cars"  # any text, byte-level


def test_encode_is_the_pipelines_own_and_words_are_chat_tokens(flux2):
    family = family_of(flux2)
    prompts = ["a red car on a road", "a bus near a tree at night"]
    ours = family.encode(flux2, prompts, "")
    embeds, _ = flux2.encode_prompt(prompts, device=flux2.device)
    negative, _ = flux2.encode_prompt(["", ""], device=flux2.device)  # the pipeline's own CFG negative
    assert ours.pipeline_kwargs.keys() == {"prompt_embeds", "negative_prompt_embeds"} and ours.context_limits == {"Qwen3": 512}
    assert torch.equal(ours.pipeline_kwargs["prompt_embeds"], embeds) and embeds.shape == (2, 512, 48)
    assert torch.equal(ours.pipeline_kwargs["negative_prompt_embeds"], negative)
    short = family.encode(flux2, prompts, "", 40)  # a config's max_sequence_length
    assert short.context_limits == {"Qwen3": 40} and torch.equal(short.pipeline_kwargs["prompt_embeds"], flux2.encode_prompt(
        prompts, device=flux2.device, max_sequence_length=40)[0])
    assert family.word_positions(flux2, short.prompts[0], "car") == [5]
    assert not any(e.truncated for e in short.prompts)
    assert family.encode(flux2, [" ".join(prompts * 4)], "", 40).prompts[0].truncated  # its chat template cut at 40
    blurry, _ = flux2.encode_prompt(["blurry"] * 2, device=flux2.device)
    assert torch.equal(family.encode(flux2, prompts, "blurry").pipeline_kwargs["negative_prompt_embeds"], blurry)
    # <|im_start|> user \n a Ġred Ġcar: the word's token inside the template; "Car" and "car" alike, "carts" not
    assert family.word_positions(flux2, ours.prompts[0], "car") == [5]
    capital = family.word_positions(flux2, family.encode(flux2, ["Car on a road"], "").prompts[0], "car")
    assert capital == [3, 4, 5] and len(flux2.tokenizer("Car").input_ids) == 3  # "C" "a" "r": not a vocabulary word
    plural = family.encode(flux2, ["two carts near a car"], "").prompts[0]
    car = flux2.tokenizer.convert_tokens_to_ids("Ġcar")
    assert plural.ids.count(car) == 2  # "carts" is "Ġcar" "ts": the same token, another word
    assert family.word_positions(flux2, plural, "car") == [len(plural.ids) - 1 - plural.ids[::-1].index(car)]
    assert family.word_positions(flux2, ours.prompts[1], "user") == []  # the template's own tokens are no word's
    stressed = family.encode(flux2, ["a red (car:1.3) on a road"], "")
    assert stressed.prompts[0].ids == ours.prompts[0].ids and family.word_positions(flux2, stressed.prompts[0], "car") == [5]
    assert [i for i, w in enumerate(stressed.prompts[0].weights) if w != 1] == [5]
    a, b = ours.pipeline_kwargs["prompt_embeds"][0], stressed.pipeline_kwargs["prompt_embeds"][0]
    assert not torch.allclose(a[5], b[5])
    scooter = family.word_positions(flux2, family.encode(flux2, ["a scooter"], "").prompts[0], "scooter")
    pieces = flux2.tokenizer.tokenize(" scooter")  # "Ġ" "s" "coo" ...: the bare space is not the word's
    assert pieces[0] == "Ġ" and scooter == list(range(5, 4 + len(pieces))) and len(scooter) > 1
    distilled = build_tiny_flux2_pipeline(distilled=True)
    assert family.encode(distilled, prompts, "blurry").pipeline_kwargs.keys() == {"prompt_embeds"}  # no CFG to feed


def test_capture_leaves_images_bit_identical_reads_only_conditional_calls_and_restores(flux2):
    """Under CFG (the base model's default 4.0) each step calls the transformer twice; only the conditional call
    records, and the pause hook leaves with the processors."""
    collector = check.assert_capture_is_invisible(flux2)
    assert collector.latent_size == (4, 7) and sorted(collector.maps) == [SINGLE, DOUBLE]
    assert collector.maps[DOUBLE].shape == (2, 2, 2, 4, 7)  # (batch: the conditional prompts, heads, tokens, h, w)
    assert collector.steps == {DOUBLE: 2, SINGLE: 2}  # 2 steps, not 4 calls
    assert "diffugen_pause_unconditional" not in flux2.transformer._diffusers_hook.hooks


def test_reference_image_tokens_make_no_map(flux2):
    """An edit's reference tokens follow the image's in the joint sequence: the maps stay on the image's grid."""
    from PIL import Image

    family = family_of(flux2)
    encoded = family.encode(flux2, ["a red car on a road"], "")
    parent = Image.fromarray(np.full((64, 96, 3), 128, np.uint8))
    with torch.no_grad(), family.capture(flux2) as collector:
        collector.reset(1, family.word_positions(flux2, encoded.prompts[0], "car"), family.latent_size(flux2, 64, 96))
        flux2(image=[parent], **encoded.pipeline_kwargs, height=64, width=96, num_inference_steps=1, output_type="np",
              generator=torch.Generator("cpu").manual_seed(1))
    assert collector.maps[DOUBLE].shape == (1, 2, 1, 4, 6) and collector.maps[SINGLE].shape == (1, 2, 1, 4, 6)


# ---- generate: the three tasks, plain diffusers, batching, shards, resume ---------------------------------
def test_generate_all_tasks_and_edits_are_the_plain_pipelines(tmp_path, dataset_name, one_torch_thread):
    """Every sample labeled; an img2img child is the plain Flux2KleinPipeline's edit of its parent (the reference
    image) with the child's prompt and seed, made one per call though the batch size is 3."""
    from PIL import Image

    check.assert_all_tasks_labeled(FLUX2, tmp_path, dataset_name)
    ds = fo.load_dataset(dataset_name)
    plain = build_tiny_flux2_pipeline()
    plain.set_progress_bar_config(disable=True)
    for child in ds.match(fo.ViewField("task") == "img2img").limit(2):
        out = plain(image=Image.open(ds[child.parent_id].filepath), prompt=child.prompt, height=64, width=96,
                    generator=torch.Generator("cpu").manual_seed(child.seed), num_inference_steps=2, output_type="np")
        image = (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)
        assert child.guidance_scale == 4.0 and np.array_equal(image, np.asarray(Image.open(child.filepath)))


def test_txt2img_images_are_the_plain_diffusers_pipelines_and_rerun_resumes(tmp_path, dataset_name, one_torch_thread):
    """Same prompt, CPU-generator seed, steps and size; the pipeline's defaults for the rest (CFG at 4.0 against
    the empty negative prompt, recorded on the samples)."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=FLUX2, batch_size=1, width=80, height=112,
                                    seeds=[11], steps=2, attributes=TWO))
    assert cfg.guidance_scale is None
    check.assert_plain_diffusers_images_and_resume(cfg, build_tiny_flux2_pipeline(), 112, 80)
    assert set(fo.load_dataset(dataset_name).values("guidance_scale")) == {4.0}


def test_shards_make_each_image_once(tmp_path, dataset_name, one_torch_thread):
    check.assert_shards_make_each_image_once(FLUX2, tmp_path, dataset_name)


def test_batch_size_does_not_change_images_or_labels(tmp_path, one_torch_thread):
    check.assert_batch_size_keeps_images_and_maps(FLUX2, tmp_path)


# ---- loading ----------------------------------------------------------------------------------------
def test_saved_folder_loads_and_is_detected_and_its_tokenizer_reloads_offline(flux2, tmp_path):
    from diffusers import Flux2KleinInpaintPipeline

    from diffugen.errors import ModelNotFoundError
    from diffugen.generation.family import family_of_class

    index, loaded = check.saved_and_loaded(flux2, tmp_path / "tiny-flux2", "flux2")
    assert index["is_distilled"] is False
    text = "a red scooter near a car"
    assert loaded.tokenizer(text).input_ids == flux2.tokenizer(text).input_ids
    assert loaded.tokenizer.chat_template == flux2.tokenizer.chat_template
    assert torch.equal(family_of(loaded).encode(loaded, [text], "").pipeline_kwargs["prompt_embeds"],
                       family_of(flux2).encode(flux2, [text], "").pipeline_kwargs["prompt_embeds"])
    inpaint = tmp_path / "tiny-flux2-inpaint"
    Flux2KleinInpaintPipeline.from_pipe(flux2).save_pretrained(inpaint)
    assert family_of(load_pipeline(str(inpaint))).name == "flux2"
    assert family_of_class("Flux2Pipeline", "black-forest-labs/FLUX.2-dev").name == "flux2"  # [dev]: test_flux2_dev
    with pytest.raises(ModelNotFoundError, match="Flux2KontextPipeline.*Flux2KleinPipeline"):
        family_of_class("Flux2KontextPipeline", "a model of a pipeline DiffuGen does not know")


def test_single_file_is_detected_by_its_keys_and_needs_its_layout(flux2, tmp_path):
    """A FLUX.2 file has FLUX.1's double_blocks and its own single_stream_modulation; diffusers loads a FLUX.2
    pipeline from a folder only (the transformer alone from a file), so a file without checkpoint_config, or one
    holding more than the transformer, gets one clear error instead of an AttributeError."""
    from safetensors.torch import save_file

    from diffugen.errors import ModelNotFoundError
    from diffugen.generation.models import checkpoint_family

    for name, prefix in (("bare", ""), ("prefixed", "model.diffusion_model.")):
        keys = {f"{prefix}double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(2),
                f"{prefix}single_stream_modulation.lin.weight": torch.ones(2)}
        save_file(keys, str(tmp_path / f"{name}.safetensors"))
        assert checkpoint_family(tmp_path / f"{name}.safetensors").name == "flux2"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(2)}, str(tmp_path / "flux1.safetensors"))
    assert checkpoint_family(tmp_path / "flux1.safetensors").name == "flux"
    with pytest.raises(ModelNotFoundError, match=r"Flux2KleinPipeline model.*set 'checkpoint_config'"):
        load_pipeline(str(tmp_path / "bare.safetensors"))
    folder = tmp_path / "layout"
    flux2.save_pretrained(folder)
    save_file({"single_stream_modulation.lin.weight": torch.ones(2), "text_encoders.qwen3.x": torch.ones(2)},
              str(tmp_path / "all-in-one.safetensors"))
    with pytest.raises(ModelNotFoundError, match="holds only the transformer"):
        load_pipeline(str(tmp_path / "all-in-one.safetensors"), checkpoint_config=str(folder))


# ---- the oracle: attention-map-diffusers' image->text maps ------------------------------------------------
def test_heatmaps_agree_with_attention_map_diffusers(flux2):
    """attention-map-diffusers records FLUX.2's double- and single-stream blocks' image->text attention, the
    conditional call's and the unconditional one's apart: ours, over every layer, must agree with its first."""
    pytest.importorskip("attention_map_diffusers", reason="attention-map-diffusers==1.0.0 is not installed")
    agreement = check.oracle_agreement(flux2)
    print(f"tiny FLUX.2: Pearson r per word {agreement}")
    assert min(agreement.values()) >= 0.99, agreement
