"""The SD3/3.5 family end to end on builtin:tiny-sd3 (with and without T5): encoding as the pipeline's own,
word positions in the CLIP and T5 parts of the text sequence, joint-attention capture, the three tasks,
batching, resume, plain-diffusers images, loading and detection, and agreement with attention-map-diffusers."""


import fiftyone as fo
import numpy as np
import pytest
import torch
import family_checks as check
from conftest import small_config

from diffugen.config import parse_config
from diffugen.config.schema import MODEL_FAMILIES
from diffugen.generation.builtin import build_tiny_sd3_pipeline, tiny_t5_tokenizer
from diffugen.generation.family import families, family_of
from diffugen.generation.models import load_pipeline
from diffugen.generation.runner import generate

SD3 = "builtin:tiny-sd3"
ONE = {"view": ["rear"], "object": ["car"], "time": ["noon"]}
TWO = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}
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


def _same_weights(a, b, skip: tuple[str, ...] = ()) -> None:
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa if f"{name}.{k}" not in skip), name


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


def test_max_sequence_length_sets_the_t5_part_as_diffusers_does(sd3, sd3_no_t5):
    """A config's ``max_sequence_length`` is the T5 part's length, with T5 and (zeros, as diffusers pads) without;
    the embeddings are the pipeline's own ``encode_prompt`` at that length."""
    family = family_of(sd3)
    for pipe in (sd3, sd3_no_t5):
        batch = family.encode(pipe, ["a red car on a road"], "", 16)
        theirs = pipe.encode_prompt("a red car on a road", "a red car on a road", "a red car on a road",
                                    do_classifier_free_guidance=False, max_sequence_length=16)[0]
        assert batch.pipeline_kwargs["prompt_embeds"].shape == theirs.shape == (1, 77 + 16, theirs.shape[2])
        torch.testing.assert_close(batch.pipeline_kwargs["prompt_embeds"], theirs)
    car = family.word_positions(sd3, family.encode(sd3, ["a red car"], "", 16).prompts[0], "car")
    assert car == [3, 77 + 2]
    # The truncation warning names both limits: a prompt CLIP keeps whole can lose its end in T5's 16 tokens.
    long = family.encode(sd3, [" ".join(["a red car on a road"] * 4)], "", 16)
    assert long.context_limits == {"CLIP": 77, "T5": 16} and long.prompts[0].truncated
    assert family.encode(sd3_no_t5, ["a red car"], "", 16).context_limits == {"CLIP": 77}


def test_capture_leaves_images_bit_identical_and_restores_processors(sd3):
    collector = check.assert_capture_is_invisible(sd3)  # every processor replaced: SD3.5's image-only attn2 too
    assert collector.latent_size == (4, 7) and collector.refine_grid() == (4, 7)
    assert sorted(collector.maps) == ["transformer_blocks.0.attn.processor", "transformer_blocks.1.attn.processor"]


# ---- generate: the three tasks, plain diffusers, batching, resume --------------------------------
def test_generate_all_tasks_gives_word_heatmaps_and_daam_labels(tmp_path, dataset_name):
    check.assert_all_tasks_labeled(SD3, tmp_path, dataset_name)


def test_txt2img_images_are_the_plain_diffusers_pipelines_and_rerun_resumes(tmp_path, dataset_name):
    """Same prompt, CPU-generator seed, steps, guidance and size; the pipeline's defaults for the rest."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=SD3, batch_size=1, width=80, height=112,
                                    seeds=[11], steps=2, attributes=TWO))
    check.assert_plain_diffusers_images_and_resume(cfg, build_tiny_sd3_pipeline(), 112, 80)


def test_shards_make_each_image_once(tmp_path, dataset_name):
    check.assert_shards_make_each_image_once(SD3, tmp_path, dataset_name)


def test_batch_size_does_not_change_images_or_labels(tmp_path):
    check.assert_batch_size_keeps_images_and_maps(SD3, tmp_path)


# ---- loading and family detection ----------------------------------------------------------------
def test_saved_folder_without_t5_loads_detects_and_generates(sd3_no_t5, tmp_path, dataset_name):
    folder = tmp_path / "tiny-sd3"
    _, loaded = check.saved_and_loaded(sd3_no_t5, folder, "sd3")
    assert loaded.text_encoder_3 is None
    assert MODEL_FAMILIES == ("auto", *[f.name for f in families()]) == ("auto", "sd", "sdxl", "sd3", "flux", "flux2")
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(folder), attributes=ONE, seeds=[5],
                                    model_family="sd3", steps=2))
    assert generate(cfg).tasks[0].made == 1
    s = fo.load_dataset(dataset_name).first()
    assert s.word_heatmaps[0].label == "car" and s.daam_segmentation is not None


# ---- the oracle: attention-map-diffusers' image->text maps ----------------------------------------
def test_heatmaps_agree_with_attention_map_diffusers(sd3):
    pytest.importorskip("attention_map_diffusers", reason="attention-map-diffusers==1.0.0 is not installed")
    agreement = check.oracle_agreement(sd3)
    print(f"tiny SD3: Pearson r per word {agreement}")
    assert min(agreement.values()) >= 0.99, agreement



def test_single_file_checkpoint_loads_with_its_layout_offline(sd3, tmp_path, dataset_name):
    from safetensors.torch import save_file

    from diffugen.errors import ModelNotFoundError
    from diffugen.generation.models import checkpoint_family

    folder, checkpoint = tmp_path / "tiny-sd3", tmp_path / "tiny-sd3.safetensors"
    sd3.save_pretrained(folder)
    save_file(original_checkpoint(sd3), str(checkpoint))
    assert checkpoint_family(checkpoint).name == "sd3"  # by its keys (joint_blocks)
    assert checkpoint_family(tmp_path / "x.ckpt", str(folder)).name == "sd3"  # by checkpoint_config's class
    loaded = load_pipeline(str(checkpoint), checkpoint_config=str(folder))
    assert type(loaded).__name__ == "StableDiffusion3Pipeline"
    # diffusers reads SD3 files' CLIP-L without a projection (the identity); every other weight comes back exactly.
    _same_weights(sd3, loaded, skip=("text_encoder.text_projection.weight",))
    assert torch.equal(loaded.text_encoder.text_projection.weight, torch.eye(32))
    with pytest.raises(ModelNotFoundError, match=r"(?s)StableDiffusion3Pipeline checkpoint.*set 'checkpoint_config'"):
        load_pipeline(str(checkpoint))  # offline, without its layout
    with pytest.raises(ModelNotFoundError, match=r"'sd3' model \(by its keys\).*layout of a 'sd' model"):
        load_pipeline(str(checkpoint), checkpoint_config="diffugen/toyworld/model")
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(checkpoint), checkpoint_config=str(folder),
                                    attributes=ONE, seeds=[5], steps=2))
    assert generate(cfg).tasks[0].made == 1
    # A file of the transformer alone (as FLUX files usually are): the rest comes from checkpoint_config's folder.
    alone = tmp_path / "tiny-sd3-transformer.safetensors"
    save_file({k: v.clone() for k, v in _original_sd3_transformer(sd3.transformer).items()}, str(alone))
    _same_weights(sd3, load_pipeline(str(alone), checkpoint_config=str(folder)))
    with pytest.raises(ModelNotFoundError, match=r"(?s)StableDiffusion3Pipeline checkpoint.*set 'checkpoint_config'"):
        load_pipeline(str(alone))


# ---- an original-layout (Stability) SD3 checkpoint from a diffusers pipeline, for the loading test ---------
# The inverse of diffusers' convert_sd3_transformer_checkpoint_to_diffusers; the VAE as in the SDXL test; the text
# encoders under text_encoders.<name>.transformer. with their transformers names, as SD3's files keep them.
def _original_sd3_transformer(transformer) -> dict:
    sd, n = transformer.state_dict(), transformer.config.num_layers
    cat = torch.cat

    def swap(w):  # the original's (shift, scale) halves are diffusers' (scale, shift)
        a, b = w.chunk(2, dim=0)
        return cat([b, a])

    out = {"pos_embed": sd["pos_embed.pos_embed"], "final_layer.linear.weight": sd["proj_out.weight"],
           "final_layer.linear.bias": sd["proj_out.bias"]}
    renames = {"pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
               "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "context_embedder": "context_embedder",
               "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
               "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2"}
    for i in range(n):
        b, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == n - 1
        qkv = {"x_block.attn": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "context_block.attn": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
        if f"{b}attn2.to_q.weight" in sd:
            qkv["x_block.attn2"] = ("attn2.to_q", "attn2.to_k", "attn2.to_v")
        for orig, parts in qkv.items():
            for kind in ("weight", "bias"):
                out[f"{o}{orig}.qkv.{kind}"] = cat([sd[f"{b}{p}.{kind}"] for p in parts])
        renames.update({b + "attn.norm_q": o + "x_block.attn.ln_q", b + "attn.norm_k": o + "x_block.attn.ln_k",
                        b + "attn.norm_added_q": o + "context_block.attn.ln_q",
                        b + "attn.norm_added_k": o + "context_block.attn.ln_k",
                        b + "attn.to_out.0": o + "x_block.attn.proj", b + "norm1.linear": o + "x_block.adaLN_modulation.1",
                        b + "ff.net.0.proj": o + "x_block.mlp.fc1", b + "ff.net.2": o + "x_block.mlp.fc2",
                        b + "attn2.norm_q": o + "x_block.attn2.ln_q", b + "attn2.norm_k": o + "x_block.attn2.ln_k",
                        b + "attn2.to_out.0": o + "x_block.attn2.proj"})
        if not last:
            renames.update({b + "attn.to_add_out": o + "context_block.attn.proj",
                            b + "norm1_context.linear": o + "context_block.adaLN_modulation.1",
                            b + "ff_context.net.0.proj": o + "context_block.mlp.fc1",
                            b + "ff_context.net.2": o + "context_block.mlp.fc2"})
        else:  # the last context block only modulates (context_pre_only), its halves swapped as the final norm's
            for kind in ("weight", "bias"):
                out[f"{o}context_block.adaLN_modulation.1.{kind}"] = swap(sd[f"{b}norm1_context.linear.{kind}"])
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = swap(sd[f"norm_out.linear.{kind}"])
        for new, orig in renames.items():
            if f"{new}.{kind}" in sd:
                out[f"{orig}.{kind}"] = sd[f"{new}.{kind}"]
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def original_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """An SD3 pipeline's weights in the original single-file layout."""
    from test_sdxl import _original_vae

    state = {**_original_sd3_transformer(pipe.transformer), **_original_vae(pipe.vae)}
    for name, encoder in (("clip_l", pipe.text_encoder), ("clip_g", pipe.text_encoder_2), ("t5xxl", pipe.text_encoder_3)):
        state.update({f"text_encoders.{name}.transformer.{k}": v for k, v in encoder.state_dict().items()})
    return {k: v.clone().contiguous() for k, v in state.items()}  # clones: T5 ties two names to one tensor


def test_textual_inversion_is_refused_clearly(sd3):
    from types import SimpleNamespace

    from diffugen.errors import ModelNotFoundError
    from diffugen.generation.embeddings import load_textual_inversions

    with pytest.raises(ModelNotFoundError, match="StableDiffusion3Pipeline cannot load textual-inversion"):
        load_textual_inversions(sd3, [SimpleNamespace(path="x.safetensors", token="<x>")])
