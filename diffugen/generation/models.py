"""Loading diffusion models: ``builtin:<name>``, a hub id, a local diffusers folder or a single checkpoint.

One loaded text-to-image pipeline serves the three tasks: its model family
(:mod:`diffugen.generation.family`) derives the img2img and inpainting pipelines from it. The family is
known before loading, from ``model_index.json``'s ``_class_name`` (folders, hub ids), the checkpoint's
keys or ``checkpoint_config`` (single files), or the config's ``model_family``; it picks the diffusers
class that loads the model (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelNotFoundError
from .builtin import BUILTINS
from .family import ModelFamily, family_named, family_of, family_of_class, set_model_defaults

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelNotFoundError(f"device {device!r} was asked for, but torch sees no CUDA device here")
    return dev


def resolve_dtype(dtype: str, device: torch.device, family: ModelFamily | None = None) -> torch.dtype:
    """``dtype`` as a torch dtype; ``"auto"``: float32 on the CPU, the family's :attr:`~.family.ModelFamily.cuda_dtype`
    on a GPU (float16 for SD/SDXL, bfloat16 for SD3/FLUX, whose activations overflow float16)."""
    if dtype == "auto":
        return getattr(torch, family.cuda_dtype if family else "float16") if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class _EmptyFloat32ListFilter(logging.Filter):
    # diffusers 0.42 warns on every `.to(dtype)` of a model that "should keep" modules in float32, even when
    # the list is empty (AutoencoderKL, UNet2DConditionModel): from_pipe does it, and SDXL's img2img and
    # inpainting pipelines on every call (the VAE's force_upcast). With an empty list nothing is kept apart.
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []." not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFloat32ListFilter())


def _hub_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def _model_index(model: str) -> dict:
    # model_index.json of a local diffusers folder or a hub id (from the cache offline).
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    if path.is_dir():
        return json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    return dict(DiffusionPipeline.load_config(model))


def _class_name(model: str) -> str:
    return _model_index(model).get("_class_name", "")


def _absent_components(model: str) -> dict[str, None]:
    """The components ``model_index.json`` lists as ``[null, null]`` (e.g. SD3 saved without T5), to pass as
    ``None``: diffusers loads such a folder only if told that ``text_encoder_3`` is meant to be absent."""
    return {name: None for name, value in _model_index(model).items()
            if not name.startswith("_") and isinstance(value, list) and value == [None, None]}


MODEL_DEFAULTS_FILE = "diffugen.json"  # in a model folder: the call defaults it gives itself
_DEFAULT_KEYS = ("steps", "guidance_scale", "height", "width", "max_sequence_length")


def folder_defaults(folder: str | Path) -> dict:
    """The call defaults a model folder records for itself in ``diffugen.json`` (``{"max_sequence_length": 0,
    "guidance_scale": 3.0}`` for the toy-world MMDiT, trained without SD3's zero T5 positions); ``{}`` when it has none.

    Raises:
        ModelNotFoundError: the file is not a JSON object mapping some of ``steps``, ``guidance_scale``,
            ``height``, ``width``, ``max_sequence_length`` to non-negative numbers.
    """
    path = Path(folder) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        defaults = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelNotFoundError(f"{path.resolve()}: not JSON ({err})") from None
    if not isinstance(defaults, dict) or any(
            k not in _DEFAULT_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
            for k, v in defaults.items()):
        raise ModelNotFoundError(f"{path.resolve()}: expected a JSON object mapping some of {list(_DEFAULT_KEYS)} to "
                                 f"non-negative numbers, got {str(defaults)[:200]}")
    return defaults


def _family_by_keys(keys: list[str]) -> str:
    # The original layouts: SD3's MMDiT has joint_blocks, FLUX's transformer double_blocks (either with or
    # without the "model.diffusion_model." prefix: FLUX files often hold the transformer alone), FLUX.2's as well,
    # with one shared single_stream_modulation (diffusers' own test for a FLUX.2 file); SDXL keeps its text
    # encoders under conditioner.embedders., SD 1.x/2.x under cond_stage_model.
    blocks = {k.removeprefix("model.diffusion_model.").split(".", 1)[0] for k in keys}
    if "joint_blocks" in blocks:
        return "sd3"
    if "single_stream_modulation" in blocks:
        return "flux2"
    if "double_blocks" in blocks:
        return "flux"
    return "sdxl" if any(k.startswith("conditioner.embedders.") for k in keys) else "sd"


def checkpoint_family(path: Path, checkpoint_config: str | None = None, model_family: str = "auto") -> ModelFamily:
    """The family of a single-file checkpoint: ``model_family`` when set, else what ``checkpoint_config``'s
    ``model_index.json`` names, else what the checkpoint's keys show (a ``.safetensors`` header is read
    without loading the weights, :func:`_family_by_keys`), else SD 1.x/2.x.

    Raises:
        ModelNotFoundError: ``checkpoint_config`` is a layout of another family than the checkpoint's keys.
    """
    if model_family != "auto":
        return family_named(model_family)
    from_keys = None
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            from_keys = family_named(_family_by_keys(keys))
        except Exception:  # noqa: BLE001 - unreadable here: from_single_file reports it
            from_keys = None
    from_config = None
    if checkpoint_config is not None:
        try:
            from_config = family_of_class(_class_name(checkpoint_config), f"checkpoint_config {checkpoint_config}")
        except (OSError, ValueError):
            from_config = None  # not readable here: from_single_file reports it
    if from_keys is not None and from_config is not None and from_keys is not from_config:
        raise ModelNotFoundError(
            f"the checkpoint {path.resolve()} is a {from_keys.name!r} model (by its keys), but checkpoint_config "
            f"{checkpoint_config} is the layout of a {from_config.name!r} model: point checkpoint_config at a "
            f"folder of the checkpoint's base model"
        )
    return from_config or from_keys or family_named("sd")


# Key prefixes of the components besides the denoiser in the original single-file layouts.
_OTHER_COMPONENTS = ("first_stage_model.", "vae.", "cond_stage_model.", "conditioner.", "text_encoders.", "text_encoder")


def _denoiser_only(path: Path) -> bool:
    """Whether a ``.safetensors`` checkpoint holds the denoiser alone (FLUX files usually do, SD3 ones may)."""
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return not any(k.startswith(_OTHER_COMPONENTS) for k in f.keys())


def _with_denoiser_from_file(family: ModelFamily, path: Path, checkpoint_config: str, torch_dtype: torch.dtype,
                             absent: dict):
    # The denoiser converted from the file; every other component from checkpoint_config's folder (diffusers'
    # pipeline from_single_file would look for them in the file, or for diffusers-named weights in the folder).
    import diffusers

    index = _model_index(checkpoint_config)
    name = "transformer" if "transformer" in index else "unet"
    denoiser = getattr(diffusers, index[name][1]).from_single_file(str(path), config=checkpoint_config, subfolder=name,
                                                                   torch_dtype=torch_dtype)
    return _pipeline_class(family, index.get("_class_name", "")).from_pretrained(
        checkpoint_config, dtype=torch_dtype, **{**absent, **family.load_kwargs, name: denoiser})


def _pipeline_class(family: ModelFamily, class_name: str = ""):
    import diffusers

    return getattr(diffusers, class_name if class_name in family.own_classes else family.pipeline_class)


def _served(pipe: DiffusionPipeline, model: str, family: ModelFamily | None, dev: torch.device):
    # The loaded pipeline, on its device, once it is known to be of a family we serve (and the one asked for).
    found = family_of(pipe)
    if family is not None and found is not family:
        raise ModelNotFoundError(
            f"{model} loaded as a {type(pipe).__name__} (model family {found.name!r}), not the {family.name!r} "
            f"family that was asked for (model_family)"
        )
    return pipe.to(dev)


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto", checkpoint_config: str | None = None,
                  model_family: str = "auto"):
    """Load a text-to-image pipeline.

    Args:
        model: ``builtin:tiny``/``builtin:tiny-sdxl``; a local folder in diffusers layout
            (``model_index.json``); a single ``.safetensors``/``.ckpt`` checkpoint (SD 1.x/2.x, e.g.
            Realistic Vision, SDXL, SD3, FLUX); or a hub id (``SG161222/Realistic_Vision_V4.0``), read from the
            local Hugging Face cache when offline.
        checkpoint_config: for single-file checkpoints, a diffusers folder or hub id giving the model
            layout (offline, diffusers cannot fetch the default one).
        model_family: ``"auto"`` (the family ``model_index.json``'s ``_class_name`` names, or for a
            checkpoint :func:`checkpoint_family`), or a family name (``"sd"``, ``"sdxl"``) to load it as.

    Raises:
        ModelNotFoundError: the model is not where we looked (the message lists the places), or it is
            of a family DiffuGen does not serve (the message names its class and the families served).
    """
    dev = resolve_device(device)
    asked = None if model_family == "auto" else family_named(model_family)
    if model.startswith("builtin:"):
        name = model.split(":", 1)[1]
        if name not in BUILTINS:
            raise ModelNotFoundError(f"unknown built-in model {model!r}; built-in models are {sorted('builtin:' + n for n in BUILTINS)}")
        pipe = BUILTINS[name]()
        torch_dtype = resolve_dtype(dtype, dev, asked or family_of(pipe))
        if pipe.dtype != torch_dtype:
            pipe = pipe.to(torch_dtype)
        return _served(pipe, model, asked, dev)

    path = Path(model).expanduser()
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise ModelNotFoundError(f"model checkpoint file not found: {path.resolve()}")
        family = checkpoint_family(path, checkpoint_config, model_family)
        torch_dtype = resolve_dtype(dtype, dev, family)
        try:
            absent = _absent_components(checkpoint_config) if checkpoint_config else {}
            if checkpoint_config and _denoiser_only(path):
                pipe = _with_denoiser_from_file(family, path, checkpoint_config, torch_dtype, absent)
            elif not hasattr(_pipeline_class(family), "from_single_file"):
                raise ModelNotFoundError(
                    f"the checkpoint {path.resolve()} is a {family.pipeline_class} model, whose pipeline diffusers loads "
                    "from a folder only: from a single file it loads the transformer alone, so set 'checkpoint_config' "
                    "to a diffusers folder (or a hub id already in the cache) of the same base model, and give a file "
                    "that holds only the transformer"
                )
            else:
                pipe = _pipeline_class(family).from_single_file(str(path), config=checkpoint_config, dtype=torch_dtype,
                                                                **{**absent, **family.load_kwargs})
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"could not load the checkpoint {path.resolve()} (a {family.pipeline_class} checkpoint): {err}\n"
                "Offline, a single-file checkpoint needs its model layout: set 'checkpoint_config' in the config "
                "to a local diffusers folder (or a hub id already in the cache) of the same base model."
            ) from None
        return _served(pipe, model, family, dev)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path.resolve()} is a folder but not a diffusers model (no model_index.json); "
                "give a diffusers folder, a .safetensors/.ckpt file, a hub id or builtin:tiny"
            )
        family = asked or family_of_class(_class_name(str(path)), str(path.resolve()))
        torch_dtype = resolve_dtype(dtype, dev, family)
        defaults = folder_defaults(path)  # (before the weights: a bad file is found at once)
        pipe = _pipeline_class(family, _class_name(str(path))).from_pretrained(str(path), dtype=torch_dtype,
                                                       **{**_absent_components(str(path)), **family.load_kwargs})
        set_model_defaults(pipe, defaults)
        return _served(pipe, model, family, dev)
    if "/" not in model or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(
            f"model {model!r} not found: no such file or folder at {path.resolve()}, and it is not a hub id (owner/name)"
        )
    try:
        family = asked or family_of_class(_class_name(model), model)
        torch_dtype = resolve_dtype(dtype, dev, family)
        pipe = _pipeline_class(family, _class_name(model)).from_pretrained(model, dtype=torch_dtype,
                                                       **{**_absent_components(model), **family.load_kwargs})
    except ModelNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - hub errors come in many classes; all mean "not here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        raise ModelNotFoundError(
            f"model {model!r} could not be loaded. Looked for: a local folder {path.resolve()} (absent); "
            f"the Hugging Face cache {_hub_cache()} (no complete snapshot); the hub "
            f"({'offline: HF_HUB_OFFLINE is set' if offline else 'unreachable or refused'}). "
            f"Download it once where the hub is reachable, or point 'model' at a local folder or checkpoint. "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return _served(pipe, model, family, dev)


_LOADED: dict[tuple, object] = {}


def cached_pipeline(model: str, device: str = "auto", dtype: str = "auto", checkpoint_config: str | None = None,
                    model_family: str = "auto"):
    """:func:`load_pipeline`, kept for the life of the process (a worker runs many shards of one model).

    Only the most recent model stays loaded, so a long-lived worker does not pile up models.
    """
    key = (model, device, dtype, checkpoint_config, model_family)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_pipeline(model, device, dtype, checkpoint_config, model_family)
    return _LOADED[key]


def set_scheduler(pipe: DiffusionPipeline, name: str | None) -> None:
    """Swap the pipeline's scheduler for a named one with the same noise schedule (``None`` keeps it)."""
    if name is None:
        return
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LMSDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    cls = {
        "ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler, "dpm++": DPMSolverMultistepScheduler,
        "lms": LMSDiscreteScheduler, "unipc": UniPCMultistepScheduler,
    }[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
