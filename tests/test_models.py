"""Model loading: builtin, a local diffusers folder (saved from the tiny model), schedulers, errors."""

import fiftyone as fo
import pytest
import torch
from conftest import small_config

from diffugen.config import parse_config
from diffugen.errors import ModelNotFoundError
from diffugen.generation.family import family_of
from diffugen.generation.models import load_pipeline
from diffugen.generation.runner import generate


def test_local_diffusers_folder_and_scheduler(tmp_path, tiny_pipe, dataset_name):
    folder = tmp_path / "tiny-sd"
    tiny_pipe.save_pretrained(folder)
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", model=str(folder), scheduler="euler",
                                    seeds=[1], attributes={"view": ["rear"], "object": ["car"], "time": ["noon"]}))
    summary = generate(cfg)
    assert summary.tasks[0].made == 1
    s = fo.load_dataset(dataset_name).first()
    assert s.model == str(folder) and s.daam_detections is not None


def test_task_pipelines_share_weights(tiny_pipe):
    for task in ("img2img", "inpaint"):
        derived = family_of(tiny_pipe).task_pipeline(tiny_pipe, task)
        assert derived.unet is tiny_pipe.unet and derived.vae is tiny_pipe.vae
        assert type(derived).__name__ == {"img2img": "StableDiffusionImg2ImgPipeline",
                                          "inpaint": "StableDiffusionInpaintPipeline"}[task]


def test_unknown_builtin_and_bad_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="built-in models are"):
        load_pipeline("builtin:huge")
    with pytest.raises(ModelNotFoundError, match="not a hub id"):
        load_pipeline(str(tmp_path / "missing-folder"))
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "x.ckpt")):
        load_pipeline(str(tmp_path / "x.ckpt"))


def test_one_loaded_model_serves_configs_without_leaking_schedulers(tmp_path):
    from diffugen.generation.runner import Runner

    a = Runner(parse_config(small_config("a", tmp_path, scheduler="euler"))).pipeline("txt2img")
    b = Runner(parse_config(small_config("b", tmp_path))).pipeline("txt2img")
    assert type(a.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(b.scheduler).__name__ == "DDIMScheduler"
    assert a.unet is b.unet  # loaded once per process (a worker runs many shards)


def test_a_pipeline_of_no_known_family_is_named_in_the_error(tiny_pipe):
    class FancyPipeline:
        pass

    with pytest.raises(ModelNotFoundError, match=r"FancyPipeline.*families it serves are \[.*'sd'"):
        family_of(FancyPipeline())
    assert family_of(tiny_pipe).name == "sd"


def test_auto_dtype_is_float32_on_cpu_and_the_familys_own_on_a_gpu():
    from diffugen.generation.family import family_named
    from diffugen.generation.models import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert {f: resolve_dtype("auto", cuda, family_named(f)) for f in ("sd", "sdxl", "sd3", "flux", "flux2")} == {
        "sd": torch.float16, "sdxl": torch.float16, "sd3": torch.bfloat16, "flux": torch.bfloat16,
        "flux2": torch.bfloat16}
    assert resolve_dtype("auto", cpu, family_named("flux")) == torch.float32
    assert resolve_dtype("float16", cpu, family_named("flux")) == torch.float16  # what the config says wins
