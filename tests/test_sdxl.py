"""The SDXL family end to end on builtin:tiny-sdxl: encoding as the pipeline's own, the three tasks,
batching, resume, plain-diffusers images, capture, loading (folder, single file, family detection) and
SDXL textual-inversion files."""

from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from diffugen.config import parse_config
from diffugen.config.schema import MODEL_FAMILIES
from diffugen.errors import ConfigError, ModelNotFoundError
from diffugen.generation.builtin import build_tiny_sdxl_pipeline
from diffugen.generation.embeddings import load_textual_inversions
from diffugen.generation.family import families, family_of
from diffugen.generation.models import checkpoint_family, load_pipeline
from diffugen.generation.planner import plan
from diffugen.generation.runner import Runner, generate
from diffugen.generation.sd import tokenize

SDXL = "builtin:tiny-sdxl"
ONE = {"view": ["rear"], "object": ["car"], "time": ["noon"]}
CONTEXT = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]


@pytest.fixture(scope="module")
def sdxl():
    """A tiny SDXL pipeline of this module's own (the runner's process-wide cached one stays untouched)."""
    pipe = build_tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(sdxl, tmp_path_factory):
    """The tiny SDXL pipeline as a diffusers folder and as one original-layout .safetensors checkpoint."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("saved")
    folder = root / "tiny-sdxl"
    sdxl.save_pretrained(folder)
    checkpoint = root / "tiny-sdxl.safetensors"
    save_file(original_checkpoint(sdxl), str(checkpoint))
    return folder, checkpoint


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _same_weights(a, b) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


# ---- the model and its encoding ------------------------------------------------------------------
def test_tiny_sdxl_is_a_complete_sdxl_pipeline(sdxl):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert type(sdxl) is StableDiffusionXLPipeline and family_of(sdxl).name == "sdxl"
    assert type(sdxl.text_encoder) is CLIPTextModel and type(sdxl.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(sdxl.unet, UNet2DConditionModel) and isinstance(sdxl.vae, AutoencoderKL)
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.unet.config.cross_attention_dim == sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    assert sdxl.tokenizer.get_vocab() == sdxl.tokenizer_2.get_vocab()
    assert (sdxl.tokenizer.pad_token, sdxl.tokenizer_2.pad_token) == ("<|endoftext|>", "!")  # as SDXL's own
    _same_weights(sdxl, build_tiny_sdxl_pipeline())  # fixed seeds


def test_task_pipelines_share_weights(sdxl):
    for task, name in (("txt2img", "StableDiffusionXLPipeline"), ("img2img", "StableDiffusionXLImg2ImgPipeline"),
                       ("inpaint", "StableDiffusionXLInpaintPipeline")):
        derived = family_of(sdxl).task_pipeline(sdxl, task)
        assert type(derived).__name__ == name and derived is not sdxl
        assert derived.unet is sdxl.unet and derived.vae is sdxl.vae and derived.text_encoder_2 is sdxl.text_encoder_2


def test_encode_is_the_pipelines_own_without_emphasis(sdxl):
    family = family_of(sdxl)
    prompts = ["a red car on a road", "a bus near a tree at night"]
    ours = family.encode(sdxl, prompts, "").pipeline_kwargs
    theirs = sdxl.encode_prompt(prompts, device=sdxl.device, do_classifier_free_guidance=True, negative_prompt=None)
    for name, ref in zip(CONTEXT, theirs):
        assert torch.equal(ours[name], ref), name
    assert not ours["negative_prompt_embeds"].any() and not ours["negative_pooled_prompt_embeds"].any()  # zeroed
    ours = family.encode(sdxl, prompts, "blurry, low quality").pipeline_kwargs
    theirs = sdxl.encode_prompt(prompts, device=sdxl.device, negative_prompt="blurry, low quality")
    for name, ref in zip(CONTEXT, theirs):
        assert torch.equal(ours[name], ref), name
    assert ours["negative_prompt_embeds"].any()


def test_emphasis_acts_on_both_text_encoders(sdxl):
    family = family_of(sdxl)
    plain = family.encode(sdxl, ["a red car on a road"], "")
    stressed = family.encode(sdxl, ["a red car++ on a road"], "")
    car = family.word_positions(sdxl, stressed.prompts[0], "car")
    assert car == family.word_positions(sdxl, plain.prompts[0], "car") == [3]
    assert stressed.prompts[0].weights[3] == pytest.approx(1.21) and stressed.prompts[0].ids == plain.prompts[0].ids
    a, b = plain.pipeline_kwargs["prompt_embeds"][0], stressed.pipeline_kwargs["prompt_embeds"][0]
    width = sdxl.text_encoder.config.hidden_size
    for half in (slice(0, width), slice(width, None)):  # the first encoder's columns, then the second's
        assert not torch.allclose(a[car[0], half], b[car[0], half])
    assert torch.equal(plain.pipeline_kwargs["pooled_prompt_embeds"], stressed.pipeline_kwargs["pooled_prompt_embeds"])


def test_both_encoders_see_the_same_token_positions(sdxl):
    prompt = "a red scooter near a car on a road"
    first, second = tokenize(sdxl, prompt, sdxl.tokenizer), tokenize(sdxl, prompt, sdxl.tokenizer_2)
    ref = [sdxl.tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids,
           sdxl.tokenizer_2(prompt, padding="max_length", max_length=77, truncation=True).input_ids]
    assert [first.ids, second.ids] == ref  # exactly what the pipeline feeds each encoder
    end = first.ids.index(sdxl.tokenizer.eos_token_id)
    assert first.ids[: end + 1] == second.ids[: end + 1] and first.ids[end + 1:] != second.ids[end + 1:]  # padding only
    family = family_of(sdxl)
    scooter = family.word_positions(sdxl, family.encode(sdxl, [prompt], "").prompts[0], "scooter")
    assert len(scooter) == len(sdxl.tokenizer.tokenize("scooter")) > 1
    long = family.encode(sdxl, [" ".join(["car"] * 100)], "")
    assert long.prompts[0].truncated and long.pipeline_kwargs["prompt_embeds"].shape[1] == 77


def test_capture_leaves_images_bit_identical_and_restores_processors(sdxl):
    family = family_of(sdxl)
    cross = [n for n in sdxl.unet.attn_processors if n.endswith("attn2.processor")]
    assert not any(n.startswith("down_blocks.0.") for n in cross)  # SDXL: no attention at full latent resolution
    encoded = family.encode(sdxl, ["a red car on a road", "a bus on a road"], "")
    positions = [family.word_positions(sdxl, e, w) for e, w in zip(encoded.prompts, ["car", "bus"])]

    def run():
        gens = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
        return sdxl(**encoded.pipeline_kwargs, generator=gens, num_inference_steps=3, height=72, width=104,
                    output_type="np").images

    before = sdxl.unet.attn_processors
    bare = run()
    with torch.no_grad(), family.capture(sdxl, "all", refine_power=1, refine_layers="all") as collector:
        assert all(sdxl.unet.attn_processors[n] is not before[n] for n in before)  # every layer replaced
        collector.reset(2, sorted({t for p in positions for t in p}), family.latent_size(sdxl, 72, 104))
        captured = run()
        maps = collector.word_heatmaps([[p] for p in positions], (72, 104))
    assert np.array_equal(bare, captured)
    assert [tuple(m[0].shape) for m in maps] == [(72, 104)] * 2 and all(float(m[0].max()) == 1.0 for m in maps)
    after = sdxl.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


# ---- generate: the three tasks, plain diffusers, batching, resume --------------------------------
def test_generate_all_tasks_gives_word_heatmaps_and_daam_labels(tmp_path, dataset_name):
    cfg = parse_config(small_config(
        dataset_name, tmp_path / "out", model=SDXL,
        img2img={"attributes": {"time": ["night"]}, "strength": 0.7},
        inpaint={"replacements": {"car": ["red suv"], "bus": ["white van"]}},
    ))
    summary = generate(cfg)
    assert [(t.task, t.made) for t in summary.tasks][:2] == [("txt2img", 8), ("img2img", 8)]
    ds = fo.load_dataset(dataset_name)
    assert ds.count_values("task").get("inpaint", 0) == summary.tasks[2].made > 0
    for s in ds:
        assert s.model == SDXL and s.metadata.width == 96 and s.metadata.height == 64
        assert Path(s.filepath).is_file() and Image.open(s.filepath).size == (96, 64)
        assert len(s.word_heatmaps) == len(s.class_words) == 1
        hm = s.word_heatmaps[0]
        assert Path(hm.map_path).is_file() and np.asarray(Image.open(hm.map_path)).max() == 255
        assert s.daam_detections.detections and s.daam_segmentation.get_mask().shape == (64, 96)
    child = ds.match(fo.ViewField("task") == "img2img").first()
    assert ds[child.parent_id].task == "txt2img" and child.attributes.time == "night"
    painted = ds.match(fo.ViewField("task") == "inpaint").first()
    assert painted.daam_detections.detections[0].label == painted.inpaint_replaced
    # Some pixels changed, not all (that exactly the dilated mask changes is the runner's, tested in test_generate).
    changed = (np.asarray(Image.open(painted.filepath)) != np.asarray(Image.open(ds[painted.parent_id].filepath))).any(-1)
    assert changed.any() and not changed.all()


def test_txt2img_images_are_the_plain_diffusers_pipelines(tmp_path, dataset_name):
    """Same prompt, CPU-generator seed, steps, guidance and size; the pipeline's defaults for the rest."""
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=SDXL, batch_size=1, width=72, height=104,
                                    seeds=[11]))
    generate(cfg)
    plain = build_tiny_sdxl_pipeline()
    plain.set_progress_bar_config(disable=True)
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 4
    for s in ds:
        out = plain(s.prompt, generator=torch.Generator("cpu").manual_seed(s.seed), num_inference_steps=s.steps,
                    guidance_scale=s.guidance_scale, height=104, width=72, output_type="np")
        assert np.array_equal(_uint8(out.images)[0], np.asarray(Image.open(s.filepath))), s.prompt


def test_batch_size_does_not_change_images_or_labels(tmp_path):
    one = parse_config(small_config("b1", tmp_path / "b1", model=SDXL, batch_size=1))
    many = parse_config(small_config("b4", tmp_path / "b4", model=SDXL, batch_size=4))
    items = plan(one, "txt2img")[:4]
    g1, g4 = Runner(one), Runner(many)
    pipe = g1.pipeline("txt2img")
    with family_of(pipe).capture(pipe) as col:
        singles = [g1.run_batch(pipe, col, "txt2img", [it]) for it in items]
        images4, maps4, found4, _ = g4.run_batch(pipe, col, "txt2img", items)
    for k, (img1, maps1, found1, _) in enumerate(singles):
        assert found1[0] == found4[k] and maps1[0]
        assert np.abs(img1[0].astype(int) - images4[k].astype(int)).max() <= 1
        for m1, m4 in zip(maps1[0], maps4[k]):
            assert np.abs(m1.astype(int) - m4.astype(int)).max() <= 1
            assert np.corrcoef(m1.ravel(), m4.ravel())[0, 1] > 0.999


def test_rerun_resumes_without_duplicates(tmp_path, dataset_name):
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=SDXL))
    generate(cfg)
    ds = fo.load_dataset(dataset_name)
    keys = sorted(ds.values("key"))
    assert generate(cfg).tasks[0].made == 0
    ds.delete_samples(ds.limit(3))
    assert generate(cfg).tasks[0].made == 3
    assert sorted(ds.values("key")) == keys and len(ds) == 8


# ---- loading and family detection ----------------------------------------------------------------
def test_saved_folder_and_single_file_load_offline(sdxl, saved, tmp_path, dataset_name):
    folder, checkpoint = saved
    from_folder = load_pipeline(str(folder))
    assert type(from_folder).__name__ == "StableDiffusionXLPipeline"
    _same_weights(sdxl, from_folder)
    assert checkpoint_family(checkpoint).name == "sdxl"  # by its keys (conditioner.embedders.1)
    assert checkpoint_family(tmp_path / "x.ckpt", str(folder)).name == "sdxl"  # by checkpoint_config's class
    assert checkpoint_family(tmp_path / "x.ckpt", model_family="sdxl").name == "sdxl"
    assert checkpoint_family(tmp_path / "x.ckpt").name == "sd"  # a .ckpt is not opened to guess
    from_file = load_pipeline(str(checkpoint), checkpoint_config=str(folder))
    assert type(from_file).__name__ == "StableDiffusionXLPipeline"
    _same_weights(sdxl, from_file)
    with pytest.raises(ModelNotFoundError, match=r"(?s)StableDiffusionXLPipeline checkpoint.*set 'checkpoint_config'"):
        load_pipeline(str(checkpoint))  # offline, without its layout
    with pytest.raises(ModelNotFoundError, match=r"'sdxl' model \(by its keys\).*layout of a 'sd' model"):
        load_pipeline(str(checkpoint), checkpoint_config="diffugen/toyworld/model")
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(checkpoint), checkpoint_config=str(folder),
                                    attributes=ONE, seeds=[5]))
    assert generate(cfg).tasks[0].made == 1
    s = fo.load_dataset(dataset_name).first()
    assert s.guidance_scale == 5.0  # not set: SDXL's own pipeline default
    # The loaded pipeline's own image (a loaded model's weights require grad, which makes torch's matmul skip
    # a folding and round differently from the frozen builtin, by ~1e-6: a uint8 pixel may differ from it).
    from_file.set_progress_bar_config(disable=True)
    out = from_file(s.prompt, generator=torch.Generator("cpu").manual_seed(5), num_inference_steps=3, height=64,
                    width=96, output_type="np")
    assert np.array_equal(_uint8(out.images)[0], np.asarray(Image.open(s.filepath)))


def test_a_model_of_no_served_family_is_named_in_the_error(saved, tmp_path, tiny_pipe):
    import json
    import shutil

    class FancyPipeline:
        pass

    with pytest.raises(ModelNotFoundError, match=r"FancyPipeline.*families it serves are \['sd', 'sdxl', 'sd3', 'flux', 'flux2'\]"):
        family_of(FancyPipeline())
    folder = tmp_path / "other"
    shutil.copytree(saved[0], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "SanaPipeline"}))
    with pytest.raises(ModelNotFoundError, match=r"names a SanaPipeline.*'sd': 'StableDiffusionPipeline', "
                                                 r"'sdxl': 'StableDiffusionXLPipeline'.*model_family"):
        load_pipeline(str(folder))
    assert family_of(load_pipeline(str(folder), model_family="sdxl")).name == "sdxl"  # the override
    with pytest.raises(ModelNotFoundError, match=r"builtin:tiny loaded as a StableDiffusionPipeline.*not the 'sdxl'"):
        load_pipeline("builtin:tiny", model_family="sdxl")
    assert MODEL_FAMILIES == ("auto", *[f.name for f in families()])  # the config's choices are the registry's
    assert parse_config(small_config("x", tmp_path, model_family="sdxl")).model_family == "sdxl"
    with pytest.raises(ConfigError, match="model_family"):
        parse_config(small_config("x", tmp_path, model_family="sana"))
    # through generate: the config's override reaches loading (the folder's index names no family we serve)
    from diffugen.generation.runner import Runner

    cfg = parse_config(small_config("x", tmp_path, model=str(folder), model_family="sdxl"))
    assert family_of(Runner(cfg).pipeline("txt2img")).name == "sdxl"
    with pytest.raises(ModelNotFoundError, match="names a SanaPipeline"):
        Runner(parse_config(small_config("y", tmp_path, model=str(folder)))).pipeline("txt2img")


# ---- textual inversion in the SDXL format --------------------------------------------------------
class TI:
    def __init__(self, path, token):
        self.path, self.token = path, token


def test_sdxl_textual_inversion_file(tmp_path, tiny_pipe):
    from safetensors.torch import save_file

    pipe = build_tiny_sdxl_pipeline()
    vectors = {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)}
    path = tmp_path / "thing.safetensors"
    save_file(vectors, str(path))
    load_textual_inversions(pipe, [TI(path, "<thing>")])
    load_textual_inversions(pipe, [TI(path, "<thing>")])  # a cached pipeline: loaded once
    for key, tok, enc in family_of(pipe).text_encoders(pipe):
        rows = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(["<thing>", "<thing>_1"])]
        assert torch.equal(rows, vectors[key]), key
    family = family_of(pipe)
    encoded = family.encode(pipe, ["a <thing> on a road"], "")  # both tokenizers split it alike
    assert family.word_positions(pipe, encoded.prompts[0], "<thing>") == [2, 3]  # two vectors, two tokens

    bad = {"sd.safetensors": {"<x>": torch.randn(32)},
           "narrow.safetensors": {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 32)},
           "uneven.safetensors": {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(2, 48)}}
    for name, state in bad.items():
        save_file(state, str(tmp_path / name))
    with pytest.raises(ModelNotFoundError, match=r"one tensor of 32-d vectors.*needs one safetensors file with 'clip_l' and 'clip_g'"):
        load_textual_inversions(pipe, [TI(tmp_path / "sd.safetensors", "<x>")])
    with pytest.raises(ModelNotFoundError, match="32-d clip_g vectors but this model's clip_g text encoder uses 48-d"):
        load_textual_inversions(pipe, [TI(tmp_path / "narrow.safetensors", "<x>")])
    with pytest.raises(ModelNotFoundError, match="different number of vectors per text encoder"):
        load_textual_inversions(pipe, [TI(tmp_path / "uneven.safetensors", "<x>")])
    assert "<x>" not in pipe.tokenizer.get_vocab() and "<x>" not in pipe.tokenizer_2.get_vocab()  # nothing half-loaded
    with pytest.raises(ModelNotFoundError, match=r"holds an SDXL embedding \(clip_l: 32-d, clip_g: 48-d\)"):
        load_textual_inversions(tiny_pipe, [TI(path, "<thing>")])


def test_sdxl_textual_inversion_token_is_labeled_end_to_end(saved, tmp_path, dataset_name):
    from safetensors.torch import save_file

    path = tmp_path / "thing.safetensors"
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, str(path))
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(saved[0]), seeds=[1], class_words=[],
                                    attributes={"view": ["rear"], "object": ["<thing>"], "time": ["noon"]},
                                    textual_inversion=[{"path": str(path), "token": "<thing>"}]))
    assert generate(cfg).tasks[0].made == 1
    s = fo.load_dataset(dataset_name).first()
    assert s.class_words == ["<thing>"] and s.word_heatmaps[0].label == "thing"
    assert s.daam_detections.detections[0].label == "thing"


# ---- an original-layout (SGM) SDXL checkpoint from a diffusers pipeline, for the loading tests ------
# The inverse of diffusers' single-file conversion (diffusers.loaders.single_file_utils), for the layouts
# builtin:tiny-sdxl uses; the loading test checks that converting back gives every weight exactly.
def _renamed(state: dict, prefixes: dict[str, str], inner) -> dict:
    # Each key's longest matching diffusers prefix → its original name; inner(prefix, rest, value) renames the rest.
    out = {}
    for key, value in state.items():
        head = max((p for p in prefixes if key.startswith(p + ".")), key=len)
        rest, value = inner(head, key[len(head) + 1:], value)
        out[prefixes[head] + "." + rest] = value
    return out


def _original_unet(unet) -> dict:
    cfg, n = unet.config, unet.config.layers_per_block + 1  # n: original blocks per level (resnets + sampler)
    prefixes = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                "mid_block.resnets.1": "middle_block.2"}
    for i in range(len(cfg.down_block_types)):
        for j in range(n - 1):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n * i + j + 1}.0"
            prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n * i + j + 1}.1"
        prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n * (i + 1)}.0.op"
    for i, kind in enumerate(cfg.up_block_types):
        for j in range(n):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n * i + j}.0"
            prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n * i + j}.1"
        prefixes[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n * i + n - 1}.{2 if 'CrossAttn' in kind else 1}.conv"
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}

    def inner(head, rest, value):
        if ".resnets." in head:
            first, _, tail = rest.partition(".")
            rest = f"{resnet.get(first, first)}.{tail}"
        return rest, value

    return {"model.diffusion_model." + k: v for k, v in _renamed(unet.state_dict(), prefixes, inner).items()}


def _original_vae(vae) -> dict:
    n = len(vae.config.up_block_types)
    prefixes = {f"{part}.{name}": f"{part}.{orig}" for part in ("encoder", "decoder")
                for name, orig in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"),
                                   ("mid_block.resnets.0", "mid.block_1"), ("mid_block.resnets.1", "mid.block_2"),
                                   ("mid_block.attentions.0", "mid.attn_1"))}
    prefixes.update({"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"})
    for i in range(len(vae.config.down_block_types)):
        for j in range(vae.config.layers_per_block):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

    def inner(head, rest, value):
        if head.endswith("attentions.0"):
            name, _, tail = rest.rpartition(".")
            rest = f"{attention[name]}.{tail}"
            if tail == "weight" and value.ndim == 2:
                value = value[:, :, None, None]  # the original's 1×1 convolutions
        elif ".resnets." in head:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        return rest, value

    return {"first_stage_model." + k: v for k, v in _renamed(vae.state_dict(), prefixes, inner).items()}


def _original_open_clip(encoder, prefix: str) -> dict:
    sd, out = encoder.state_dict(), {}
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    for k, v in sd.items():
        if k in fixed:
            out[prefix + fixed[k]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()  # OpenCLIP multiplies x @ projection
        elif ".self_attn.q_proj." in k:  # q, k, v as one in_proj
            layer, kind = k.split(".")[3], k.rsplit(".", 1)[1]
            qkv = [sd[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(qkv)
        elif ".self_attn.k_proj." not in k and ".self_attn.v_proj." not in k:
            name = (k.replace("text_model.encoder.layers.", "resblocks.").replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2").replace(".fc1.", ".c_fc.").replace(".fc2.", ".c_proj.")
                    .replace(".self_attn", ".attn"))
            out[prefix + "transformer." + name] = v
    return out


def original_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline's weights in the original (Stability SGM) single-file layout."""
    clip_l = {"conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
              for k, v in pipe.text_encoder.state_dict().items()}  # CLIP ViT-L keeps the transformers names
    state = {**_original_unet(pipe.unet), **_original_vae(pipe.vae), **clip_l,
             **_original_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model.")}
    return {k: v.contiguous() for k, v in state.items()}
