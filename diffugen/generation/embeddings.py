"""Textual-inversion embeddings: read safely (no pickle runs) and added to a pipeline's tokenizer and
text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelNotFoundError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")


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


def load_textual_inversions(pipe: DiffusionPipeline, embeddings) -> None:
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
