"""Loading diffusion models: ``builtin:<name>``, a hub id, a local diffusers folder or a single checkpoint.

One loaded model serves the three tasks: :func:`pipeline_for_task` derives the img2img and
inpainting pipelines from the text-to-image one with ``from_pipe``, sharing its weights.
Textual-inversion embeddings are read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .builtin import BUILTINS
from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")


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
        return pipe.to(dev, torch_dtype)

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


def pipeline_for_task(pipe, task: str):
    """The pipeline for ``task`` sharing ``pipe``'s components (no copy of the weights)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    if task == "txt2img":
        return type(pipe).from_pipe(pipe)  # a new object: a scheduler set on it leaves the cached one alone
    cls = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[task]
    return cls.from_pipe(pipe)


def set_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler for a named one with the same noise schedule (``None`` keeps it)."""
    if name is None:
        return
    from diffusers import (
        DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
        LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler,
    )

    cls = {
        "ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler, "dpm++": DPMSolverMultistepScheduler,
        "lms": LMSDiscreteScheduler, "unipc": UniPCMultistepScheduler,
    }[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def read_embedding(path: str | Path, token: str) -> torch.Tensor:
    """Read a textual-inversion embedding safely; returns ``(num_vectors, dim)``.

    Accepts the diffusers format (``{token: tensor}``, ``.bin``/``.safetensors``/``.pt``) and the
    A1111 format (``{"string_to_param": {"*": tensor}}``). ``.pt``/``.bin`` files are read with
    ``torch.load(weights_only=True)``, so a file carrying pickled code is refused, not run.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"textual-inversion embedding for {token!r} not found: {path.resolve()}")
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ModelNotFoundError(f"{path}: an embedding must be one of {EMBEDDING_SUFFIXES}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors vary; the message matters
        raise ModelNotFoundError(f"could not read the embedding {path} safely: {type(err).__name__}: {err}") from None
    if isinstance(state, torch.Tensor):
        tensor = state
    elif "string_to_param" in state:
        tensor = next(iter(state["string_to_param"].values()))
    elif "emb_params" in state:
        tensor = state["emb_params"]
    elif len(state) == 1:
        tensor = next(iter(state.values()))
    else:
        raise ModelNotFoundError(f"{path}: not a textual-inversion embedding (keys {sorted(state)[:5]})")
    tensor = tensor.detach().float()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def load_textual_inversions(pipe, embeddings) -> None:
    """Add each ``(path, token)`` embedding to the pipeline's tokenizer and text encoder.

    Raises:
        ModelNotFoundError: a file is missing or unreadable, or its width does not match the model's.
    """
    for ti in embeddings:
        tensor = read_embedding(ti.path, ti.token)
        width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
        if tensor.shape[1] != width:
            raise ModelNotFoundError(
                f"embedding {ti.path} for {ti.token!r} has {tensor.shape[1]}-d vectors but this model's text "
                f"encoder uses {width}-d (SD 1.x: 768, SD 2.x: 1024): it was trained for another base model"
            )
        if ti.token in pipe.tokenizer.get_vocab():
            continue  # already loaded into this (cached) pipeline
        pipe.load_textual_inversion({ti.token: tensor if tensor.shape[0] > 1 else tensor[0]}, token=ti.token)
