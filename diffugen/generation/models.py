"""Loading diffusion models: ``builtin:<name>``, a hub id, a local diffusers folder or a single checkpoint.

One loaded text-to-image pipeline serves the three tasks: its model family
(:mod:`diffugen.generation.family`) derives the img2img and inpainting pipelines from it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelNotFoundError
from .builtin import BUILTINS

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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def cast_built_pipeline(pipe: DiffusionPipeline, dtype: torch.dtype):
    """A pipeline built in code, cast to ``dtype``.

    diffusers warns on every ``.to(dtype)`` to load with ``torch_dtype`` instead, so that modules it
    keeps in float32 stay so; a model built in code has no such modules (the list it names is empty).
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return pipe.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _hub_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto", checkpoint_config: str | None = None):
    """Load a text-to-image pipeline.

    Args:
        model: ``builtin:tiny``; a local folder in diffusers layout (``model_index.json``); a single
            ``.safetensors``/``.ckpt`` checkpoint (SD 1.x/2.x, e.g. Realistic Vision); or a hub id
            (``SG161222/Realistic_Vision_V4.0``), read from the local Hugging Face cache when offline.
        checkpoint_config: for single-file checkpoints, a diffusers folder or hub id giving the model
            layout (offline, diffusers cannot fetch the default one).

    Raises:
        ModelNotFoundError: the model is not where we looked; the message lists the places.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if model.startswith("builtin:"):
        name = model.split(":", 1)[1]
        if name not in BUILTINS:
            raise ModelNotFoundError(f"unknown built-in model {model!r}; built-in models are {sorted('builtin:' + n for n in BUILTINS)}")
        pipe = BUILTINS[name]()
        if pipe.dtype != torch_dtype:
            pipe = cast_built_pipeline(pipe, torch_dtype)
        return pipe.to(dev)

    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    path = Path(model).expanduser()
    common = dict(torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if not path.is_file():
            raise ModelNotFoundError(f"model checkpoint file not found: {path.resolve()}")
        try:
            pipe = StableDiffusionPipeline.from_single_file(str(path), config=checkpoint_config, **common)
        except (OSError, ValueError) as err:
            raise ModelNotFoundError(
                f"could not load the checkpoint {path.resolve()}: {err}\n"
                "Offline, a single-file checkpoint needs its model layout: set 'checkpoint_config' in the config "
                "to a local diffusers folder (or a hub id already in the cache) of the same base model."
            ) from None
        return pipe.to(dev)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path.resolve()} is a folder but not a diffusers model (no model_index.json); "
                "give a diffusers folder, a .safetensors/.ckpt file, a hub id or builtin:tiny"
            )
        pipe = AutoPipelineForText2Image.from_pretrained(str(path), **common)
        return pipe.to(dev)
    if "/" not in model or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(
            f"model {model!r} not found: no such file or folder at {path.resolve()}, and it is not a hub id (owner/name)"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(model, **common)
    except Exception as err:  # noqa: BLE001 - hub errors come in many classes; all mean "not here"
        raise ModelNotFoundError(
            f"model {model!r} could not be loaded. Looked for: a local folder {path.resolve()} (absent); "
            f"the Hugging Face cache {_hub_cache()} (no complete snapshot); the hub "
            f"({'offline: HF_HUB_OFFLINE is set' if offline else 'unreachable or refused'}). "
            f"Download it once where the hub is reachable, or point 'model' at a local folder or checkpoint. "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return pipe.to(dev)


_LOADED: dict[tuple, object] = {}


def cached_pipeline(model: str, device: str = "auto", dtype: str = "auto", checkpoint_config: str | None = None):
    """:func:`load_pipeline`, kept for the life of the process (a worker runs many shards of one model).

    Only the most recent model stays loaded, so a long-lived worker does not pile up models.
    """
    key = (model, device, dtype, checkpoint_config)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_pipeline(model, device, dtype, checkpoint_config)
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
