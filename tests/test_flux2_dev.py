"""FLUX.2 [dev] end to end on builtin:tiny-flux2-dev: a Mistral 3 text encoder read through a PixtralProcessor built in
code (saved and reloaded offline), encoding as the pipeline's own, word positions inside the user's instruction after
the system prompt, guidance-distilled capture (one transformer call per step), txt2img and img2img edits as the plain
pipeline makes them, inpainting by another model of the task's choosing, batching, shards, resume, loading from a
folder and from a transformer file, and agreement with attention-map-diffusers."""


import fiftyone as fo
import numpy as np
import pytest
import torch
import family_checks as check
from conftest import small_config

from diffugen.config import parse_config
from diffugen.errors import DiffuGenError
from diffugen.generation.builtin import TINY_WORDS, build_tiny_flux2_dev_pipeline
from diffugen.generation.family import family_of
from diffugen.generation.models import load_pipeline

DEV = "builtin:tiny-flux2-dev"
DOUBLE, SINGLE = "transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"
TWO = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}


@pytest.fixture(scope="module")
def dev(one_torch_thread):
    """A tiny FLUX.2 [dev] pipeline of this module's own (the runner's cached one stays untouched)."""
    pipe = build_tiny_flux2_dev_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- the model, its processor and its encoding ----------------------------------------------------------
def test_tiny_flux2_dev_is_a_complete_dev_pipeline(dev):
    from diffusers import AutoencoderKLFlux2, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3ForConditionalGeneration, PixtralProcessor

    assert type(dev) is Flux2Pipeline and family_of(dev).name == "flux2"
    assert type(dev.text_encoder) is Mistral3ForConditionalGeneration and isinstance(dev.tokenizer, PixtralProcessor)
    assert isinstance(dev.transformer, Flux2Transformer2DModel) and isinstance(dev.vae, AutoencoderKLFlux2)
    assert dev.transformer.config.guidance_embeds and dev.text_encoder.config.text_config.num_hidden_layers == 30
    again = build_tiny_flux2_dev_pipeline()  # fixed seeds
    for name in ("transformer", "vae", "text_encoder"):
        sa, sb = getattr(dev, name).state_dict(), getattr(again, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    family = family_of(dev)
    for task in ("txt2img", "img2img"):
        derived = family.task_pipeline(dev, task)
        assert type(derived) is Flux2Pipeline and derived is not dev and derived.transformer is dev.transformer
    with pytest.raises(DiffuGenError, match=r"inpaint: FLUX.2 \[dev\].*no inpainting pipeline.*the task section's 'model'"):
        family.task_pipeline(dev, "inpaint")
    assert family.call_defaults(dev) == {"steps": 50, "guidance_scale": 4.0, "height": 1024, "width": 1024}


def test_processor_tokenizes_in_mistral3s_instruct_format(dev):
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    tok = dev.tokenizer.tokenizer
    text = dev.tokenizer.apply_chat_template(
        [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
         {"role": "user", "content": [{"type": "text", "text": "a red car"}]}], tokenize=False)
    assert text == f"<s>[SYSTEM_PROMPT]{SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]a red car[/INST]"
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)[-5:] == [
        "[INST]", "a", "Ġred", "Ġcar", "[/INST]"]
    assert tok("a car").input_ids[0] == tok.bos_token_id  # Mistral's tokenizer writes <s> first
    assert all(len(tok(f" {w}", add_special_tokens=False).input_ids) == 1 for w in TINY_WORDS)
    assert len(tok(" scooter", add_special_tokens=False).input_ids) > 1 and tok.pad_token == "<pad>"
    assert tok.decode(tok("A Scooter, 3 cars", add_special_tokens=False).input_ids) == "A Scooter, 3 cars"


def test_encode_is_the_pipelines_own_and_words_are_inside_the_instruction(dev):
    family = family_of(dev)
    prompts = ["a red car on a road", "a bus near a tree at night"]
    ours = family.encode(dev, prompts, "blurry")  # guidance-distilled: no negative prompt to feed
    embeds, _ = dev.encode_prompt(prompts, device=dev.device)
    assert ours.pipeline_kwargs.keys() == {"prompt_embeds"} and ours.context_limits == {"Mistral3": 512}
    assert torch.equal(ours.pipeline_kwargs["prompt_embeds"], embeds) and embeds.shape == (2, 512, 48)
    # The tokens the pipeline feeds: <s> [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT] [INST] a Ġred Ġcar ... [/INST] <pad>...
    ids = ours.prompts[0].ids
    inst = ids.index(dev.tokenizer.tokenizer.convert_tokens_to_ids("[INST]"))
    assert family.word_positions(dev, ours.prompts[0], "car") == [inst + 3]
    assert family.word_positions(dev, ours.prompts[0], "image") == []  # the system prompt's words are no word's
    assert family.word_positions(dev, ours.prompts[1], "object") == []
    short = family.encode(dev, prompts, "", 80)  # a config's max_sequence_length
    assert short.context_limits == {"Mistral3": 80} and not any(e.truncated for e in short.prompts)
    assert torch.equal(short.pipeline_kwargs["prompt_embeds"],
                       dev.encode_prompt(prompts, device=dev.device, max_sequence_length=80)[0])
    cut = family.encode(dev, ["a red car on a road"], "", inst + 2).prompts[0]  # ends inside the instruction
    assert cut.truncated and family.word_positions(dev, cut, "car") == []
    stressed = family.encode(dev, ["a red (car:1.3) on a road"], "")
    assert stressed.prompts[0].ids == ids and family.word_positions(dev, stressed.prompts[0], "car") == [inst + 3]
    assert [i for i, w in enumerate(stressed.prompts[0].weights) if w != 1] == [inst + 3]
    assert not torch.allclose(ours.pipeline_kwargs["prompt_embeds"][0, inst + 3],
                              stressed.pipeline_kwargs["prompt_embeds"][0, inst + 3])


def test_capture_leaves_images_bit_identical_with_one_call_per_step(dev):
    collector = check.assert_capture_is_invisible(dev)
    assert collector.latent_size == (4, 7) and sorted(collector.maps) == [SINGLE, DOUBLE]
    assert collector.maps[DOUBLE].shape == (2, 2, 2, 4, 7)
    assert collector.steps == {DOUBLE: 2, SINGLE: 2}


# ---- generate: the tasks, plain diffusers, batching, shards, resume -------------------------------------
def test_generate_all_tasks_inpainting_with_a_klein_model(tmp_path, dataset_name, one_torch_thread):
    """txt2img and img2img with [dev] (an img2img child is the plain Flux2Pipeline's edit of its parent), inpaint
    with the task section's own FLUX.2 [klein] model."""
    from PIL import Image

    check.assert_all_tasks_labeled(DEV, tmp_path, dataset_name, inpaint_model="builtin:tiny-flux2")
    ds = fo.load_dataset(dataset_name)
    plain = build_tiny_flux2_dev_pipeline()
    plain.set_progress_bar_config(disable=True)
    child = ds.match(fo.ViewField("task") == "img2img").first()
    out = plain(image=Image.open(ds[child.parent_id].filepath), prompt=child.prompt, height=64, width=96,
                generator=torch.Generator("cpu").manual_seed(child.seed), num_inference_steps=2, output_type="np")
    image = (np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8)
    assert child.guidance_scale == 4.0 and np.array_equal(image, np.asarray(Image.open(child.filepath)))


def test_inpainting_with_dev_fails_before_anything_is_written(tmp_path, dataset_name):
    from diffugen.generation.runner import generate

    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=DEV, steps=2, seeds=[11],
                                    inpaint={"replacements": {"car": ["red suv"]}}))
    with pytest.raises(DiffuGenError, match=r"FLUX.2 \[dev\]"):
        generate(cfg)
    assert not fo.dataset_exists(dataset_name) and not (tmp_path / "out").exists()


def test_txt2img_images_are_the_plain_diffusers_pipelines_and_rerun_resumes(tmp_path, dataset_name, one_torch_thread):
    """Same prompt, CPU-generator seed, steps and size; the pipeline's distilled guidance 4.0 where the config has none."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=DEV, batch_size=1, width=80, height=112,
                                    seeds=[11], steps=2, attributes=TWO))
    assert cfg.guidance_scale is None
    check.assert_plain_diffusers_images_and_resume(cfg, build_tiny_flux2_dev_pipeline(), 112, 80)
    assert set(fo.load_dataset(dataset_name).values("guidance_scale")) == {4.0}


def test_shards_make_each_image_once(tmp_path, dataset_name, one_torch_thread):
    check.assert_shards_make_each_image_once(DEV, tmp_path, dataset_name)


def test_batch_size_does_not_change_images_or_labels(tmp_path, one_torch_thread):
    check.assert_batch_size_keeps_images_and_maps(DEV, tmp_path)


# ---- loading ----------------------------------------------------------------------------------------
def test_saved_folder_and_transformer_file_load_as_dev_offline(dev, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-flux2-dev"
    _, loaded = check.saved_and_loaded(dev, folder, "flux2")
    assert type(loaded.tokenizer).__name__ == "PixtralProcessor"
    text = "a red scooter near a car"
    assert torch.equal(family_of(loaded).encode(loaded, [text], "").pipeline_kwargs["prompt_embeds"],
                       family_of(dev).encode(dev, [text], "").pipeline_kwargs["prompt_embeds"])
    # A [dev] transformer file with the folder as its layout: the folder's own pipeline class, not [klein]'s.
    save_file(_to_original_flux2_keys(dev.transformer.state_dict()), str(tmp_path / "flux2-dev.safetensors"))
    from_file = load_pipeline(str(tmp_path / "flux2-dev.safetensors"), checkpoint_config=str(folder))
    assert type(from_file).__name__ == "Flux2Pipeline" and type(from_file.tokenizer).__name__ == "PixtralProcessor"
    ours, theirs = from_file.transformer.state_dict(), dev.transformer.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


_ORIGINAL_NAMES = {  # diffusers → Black Forest Labs' names, as a FLUX.2 single file holds the transformer
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm", "attn.to_out.0": "img_attn.proj",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
    "attn.to_add_out": "txt_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2",
}
_ORIGINAL_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
                    "attn.norm_k": "norm.key_norm"}


def _to_original_flux2_keys(state: dict) -> dict:
    """The transformer's weights under the original key names (what diffusers'
    ``convert_flux2_transformer_checkpoint_to_diffusers`` reads): fused QKV, ``scale`` for the RMS norms, the final
    modulation's shift before its scale."""
    out = {}
    for key, value in state.items():
        name, param = key.rsplit(".", 1)
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            prefix, index, inner = name.split(".", 2)
            table = _ORIGINAL_SINGLE if prefix == "single_transformer_blocks" else _ORIGINAL_NAMES
            block = "single_blocks" if prefix == "single_transformer_blocks" else "double_blocks"
            if inner in ("attn.to_q", "attn.add_q_proj"):
                stream = "img" if inner == "attn.to_q" else "txt"
                parts = [state[f"{prefix}.{index}.{inner[:-1] + c if stream == 'img' else f'attn.add_{c}_proj'}.{param}"]
                         for c in "qkv"]
                out[f"{block}.{index}.{stream}_attn.qkv.{param}"] = torch.cat(parts)
                continue
            if inner in ("attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj"):
                continue
            name = f"{block}.{index}.{table[inner]}"
            param = "scale" if "norm" in inner else param
        elif name == "norm_out.linear":
            name, value = "final_layer.adaLN_modulation.1", torch.cat(value.chunk(2)[::-1])
        else:
            name = _ORIGINAL_NAMES[name]
        out[f"{name}.{param}"] = value
    return out


# ---- the oracle: attention-map-diffusers' image->text maps ------------------------------------------------
def test_heatmaps_agree_with_attention_map_diffusers(dev):
    pytest.importorskip("attention_map_diffusers", reason="attention-map-diffusers==1.0.0 is not installed")
    agreement = check.oracle_agreement(dev)
    print(f"tiny FLUX.2 [dev]: Pearson r per word {agreement}")
    assert min(agreement.values()) >= 0.99, agreement
