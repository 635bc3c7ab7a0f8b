"""builtin:toyworld-mmdit, the SD3-style transformer trained on the toy world, and the per-model call defaults
(``diffugen.json``) it relies on: its T5 length of 0 reaches the encoder of every task pipeline, its images are
the plain ``StableDiffusion3Pipeline``'s, all three tasks label, and the trainer's ``--arch mmdit`` runs and
resumes."""

import json

import fiftyone as fo
import pytest
import family_checks as check
from conftest import small_config

from diffugen.cli import main
from diffugen.config import parse_config
from diffugen.generation.builtin import build_tiny_sd3_pipeline
from diffugen.generation.family import family_of, model_defaults
from diffugen.generation.models import load_pipeline
from diffugen.toyworld import MMDIT_DIR, load_toyworld_mmdit_pipeline, model_available

MMDIT = "builtin:toyworld-mmdit"
shipped = pytest.mark.skipif(not model_available(MMDIT_DIR), reason="diffugen/toyworld/model-mmdit is not there")
SHAPES = {"color": ["red", "white"], "shape": ["circle", "square"]}


def _shape_config(name: str, root, **overrides) -> dict:
    return small_config(name, root, model=MMDIT, templates=["a {color} {shape} on the road"], attributes=SHAPES,
                        class_words=["circle", "square"], seeds=[3], steps=4, **overrides)


# ---- per-model call defaults ---------------------------------------------------------------------
def test_a_folders_t5_length_reaches_the_encoder_of_every_task(tmp_path):
    folder = tmp_path / "sd3"
    build_tiny_sd3_pipeline(with_t5=False).save_pretrained(folder)
    (folder / "diffugen.json").write_text(json.dumps({"max_sequence_length": 4, "steps": 3}))
    pipe = load_pipeline(str(folder))
    family = family_of(pipe)
    assert model_defaults(pipe) == {"max_sequence_length": 4, "steps": 3}
    assert family.call_defaults(pipe)["steps"] == 3 and family.call_defaults(pipe)["guidance_scale"] == 7.0
    for task in ("txt2img", "img2img", "inpaint"):  # from_pipe: new pipelines on the same modules
        embeds = family.encode(family.task_pipeline(pipe, task), ["a car"], "").pipeline_kwargs["prompt_embeds"]
        assert embeds.shape[1] == 77 + 4, task
    (folder / "diffugen.json").unlink()
    assert family.encode(load_pipeline(str(folder)), ["a car"], "").pipeline_kwargs["prompt_embeds"].shape[1] == 77 + 256


@pytest.mark.parametrize("content", ['{"max_sequence_length": "short"}', '{"seed": 1}', "[4]", "{not json"])
def test_a_bad_defaults_file_stops_the_run_before_anything_is_written(tmp_path, content, capsys):
    folder = tmp_path / "sd3"
    build_tiny_sd3_pipeline(with_t5=False).save_pretrained(folder)
    (folder / "diffugen.json").write_text(content)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(small_config("bad-defaults", tmp_path / "out", model=str(folder))))
    capsys.readouterr()  # (saving's progress bars)
    assert main(["generate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diffugen.json" in err[0], err
    assert not (tmp_path / "out").exists() and not fo.dataset_exists("bad-defaults")


# ---- the shipped model ---------------------------------------------------------------------------
@shipped
def test_shipped_mmdit_loads_offline_as_sd3_without_t5_and_its_own_sizes():
    pipe = load_pipeline(MMDIT)
    family = family_of(pipe)
    assert family.name == "sd3" and pipe.text_encoder_3 is None and pipe.vae.config.latent_channels == 16
    defaults = family.call_defaults(pipe)
    assert defaults["max_sequence_length"] == 0 and (defaults["height"], defaults["width"]) == (64, 64)
    assert defaults["guidance_scale"] == 3.0  # its own (diffugen.json), not SD3's 7.0
    assert family.encode(pipe, ["a red circle"], "").pipeline_kwargs["prompt_embeds"].shape[1] == 32
    total = sum(f.stat().st_size for f in MMDIT_DIR.rglob("*") if f.is_file())
    assert total < 25e6, total


@shipped
def test_mmdit_images_are_the_plain_sd3_pipelines_and_rerun_resumes(tmp_path, dataset_name):
    cfg = parse_config(_shape_config(dataset_name, tmp_path / "out", width=64, height=64, batch_size=1))
    check.assert_plain_diffusers_images_and_resume(cfg, load_toyworld_mmdit_pipeline(), 64, 64, max_sequence_length=0,
                                             guidance_scale=3.0)  # what its diffugen.json records


@shipped
def test_mmdit_labels_all_three_tasks(tmp_path, dataset_name):
    check.assert_all_tasks_labeled(MMDIT, tmp_path, dataset_name)


# ---- the trainer ---------------------------------------------------------------------------------
def test_mmdit_trainer_runs_resumes_and_writes_a_loadable_sd3_folder(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    common = ["toyworld", "train", "--arch", "mmdit", "--state", str(state), "--out", str(out), "--pool", "64",
              "--batch", "4", "--vae-batch", "2", "--vae-steps", "2", "--save-every", "0"]
    assert main([*common, "--steps", "1"]) == 0
    assert main([*common, "--steps", "2", "--resume"]) == 0
    import torch

    assert torch.load(state / "diffusion.pt", weights_only=True)["step"] == 2
    assert json.loads((out / "diffugen.json").read_text()) == {"max_sequence_length": 0, "guidance_scale": 3.0}
    pipe = load_pipeline(str(out))
    assert family_of(pipe).name == "sd3" and model_defaults(pipe) == {"max_sequence_length": 0, "guidance_scale": 3.0}
    assert pipe.transformer.config.patch_size == 1 and pipe.vae.config.shift_factor is not None
    other = tmp_path / "other"
    assert main([*common[:5], str(tmp_path / "state2"), "--out", str(other), *common[8:], "--steps", "1",
                 "--mmdit-layers", "2", "--mmdit-heads", "2", "--device", "cpu"]) == 0
    config = load_pipeline(str(other)).transformer.config
    assert (config.num_layers, config.num_attention_heads, config.caption_projection_dim) == (2, 2, 64)


@pytest.mark.parametrize("device", ["cuda", "tpu", "gpu0"])
def test_trainer_refuses_a_device_this_machine_lacks_before_anything_is_written(tmp_path, device, capsys):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    state, out = tmp_path / "state", tmp_path / "out"
    assert main(["toyworld", "train", "--arch", "mmdit", "--state", str(state), "--out", str(out), "--steps", "1",
                 "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--device {device}" in err
    assert not state.exists() and not out.exists()


@shipped
def test_mmdit_fine_tunes_from_a_model_folder_on_its_frozen_vae(tmp_path):
    import torch

    state, out = tmp_path / "state", tmp_path / "out"
    assert main(["toyworld", "train", "--arch", "mmdit", "--init-from", str(MMDIT_DIR), "--state", str(state),
                 "--out", str(out), "--steps", "1", "--pool", "64", "--batch", "4", "--save-every", "0"]) == 0
    shipped_pipe, tuned = load_toyworld_mmdit_pipeline(), load_toyworld_mmdit_pipeline(out)
    assert not (state / "vae.pt").exists()  # no VAE phase: the folder's VAE is kept as it is
    for a, b in zip(shipped_pipe.vae.state_dict().values(), tuned.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert tuned.vae.config.shift_factor == shipped_pipe.vae.config.shift_factor
    assert torch.load(state / "diffusion.pt", weights_only=True)["step"] == 1


@shipped
@pytest.mark.parametrize("arch", ["unet", "mmdit"])
def test_fine_tuning_a_folder_of_the_other_architecture_is_refused_before_anything_is_written(tmp_path, arch, capsys):
    from diffugen.toyworld import MODEL_DIR

    state, out = tmp_path / "state", tmp_path / "out"
    folder = MMDIT_DIR if arch == "unet" else MODEL_DIR
    assert main(["toyworld", "train", "--arch", arch, "--init-from", str(folder), "--state", str(state),
                 "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and f"--arch {'mmdit' if arch == 'unet' else 'unet'}" in err
    assert not state.exists() and not out.exists()
