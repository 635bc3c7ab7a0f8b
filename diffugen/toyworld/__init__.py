"""The toy world: a procedural scene generator and a small Stable Diffusion model trained on it.

``diffugen/toyworld/model/`` holds the shipped model (diffusers format, float16 safetensors, trained
from scratch on the CPU with :mod:`diffugen.toyworld.train`, then fine-tuned with hollow shapes):
64×64 images of one to three flat-colour shapes (circle, square, triangle, hollow square, hollow
triangle; red, yellow, white, black, purple) on road, grass, sand or water, by day, at dusk or at
night, from prompts such as "a red circle on the road" or "photo of grass with a yellow triangle and
a white hollow square". Its cross-attention labels can be
checked against the truth read back from the pixels (:func:`diffugen.toyworld.truth.recover_instances`);
``bench/label_accuracy.py`` does that.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"
MMDIT_DIR = MODEL_DIR.parent / "model-mmdit"  # builtin:toyworld-mmdit (diffugen.toyworld.mmdit)
WORLD_FILE = "world.json"  # in a model folder trained on a world other than the default one

__all__ = ["MMDIT_DIR", "MODEL_DIR", "load_toyworld_mmdit_pipeline", "load_toyworld_pipeline", "load_world",
           "model_available", "save_world"]


def model_available(folder: str | Path | None = None) -> bool:
    return (Path(folder) if folder else MODEL_DIR).joinpath("model_index.json").is_file()


def load_world(folder: str | Path | None = None) -> dict:
    """The :func:`~diffugen.toyworld.scene.make_scene` arguments of the world a model folder was trained
    on (``{}``: the default world, as for the shipped model)."""
    import json

    path = (Path(folder) if folder else MODEL_DIR) / WORLD_FILE
    if not path.is_file():
        return {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(path.read_text()).items()}


def save_world(folder: str | Path, world: dict | None) -> None:
    """Record in a model folder the world it learned, for judging its images (:func:`load_world`); none for the
    default world."""
    import json

    path = Path(folder) / WORLD_FILE
    path.unlink(missing_ok=True)
    if world:
        path.write_text(json.dumps(world, indent=1))


def load_toyworld_pipeline(folder: str | Path | None = None, dtype=None):
    """The toy-world ``StableDiffusionPipeline`` (float32 on the CPU by default), loaded offline.

    Args:
        folder: a diffusers folder written by ``python -m diffugen.toyworld.train`` (default: the shipped one).
        dtype: torch dtype to run in (default float32; the weights are stored in float16).

    Raises:
        ModelNotFoundError: the folder is missing or is not a complete diffusers model.
    """
    from diffusers import StableDiffusionPipeline

    return _load(Path(folder) if folder else MODEL_DIR, StableDiffusionPipeline, dtype, "",
                 safety_checker=None, requires_safety_checker=False)


def load_toyworld_mmdit_pipeline(folder: str | Path | None = None, dtype=None):
    """``builtin:toyworld-mmdit``: the toy world's SD3-style ``StableDiffusion3Pipeline`` (:mod:`.mmdit`), loaded
    offline with the call defaults its folder records (no zero T5 positions)."""
    from diffusers import StableDiffusion3Pipeline

    from ..generation.family import set_model_defaults
    from ..generation.models import folder_defaults

    path = Path(folder) if folder else MMDIT_DIR
    pipe = _load(path, StableDiffusion3Pipeline, dtype, " --arch mmdit", text_encoder_3=None, tokenizer_3=None)
    set_model_defaults(pipe, folder_defaults(path))
    return pipe


def _load(path: Path, cls, dtype, train_flags: str, **kwargs):
    import torch

    from ..errors import ModelNotFoundError

    if not model_available(path):
        raise ModelNotFoundError(
            f"the toy-world model is not installed: no {path / 'model_index.json'}. It ships inside the diffugen "
            f"package (diffugen/toyworld/{path.name}/); reinstall diffugen with its package data, or train it with "
            f"'python -m diffugen.toyworld.train{train_flags} --out {path}'"
        )
    try:
        pipe = cls.from_pretrained(str(path), dtype=dtype or torch.float32, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"the toy-world model in {path} could not be loaded: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
