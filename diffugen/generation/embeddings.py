"""Textual-inversion embeddings: read safely (no pickle runs) and added to a pipeline's tokenizers and
text encoders (one for SD 1.x/2.x, two for SDXL)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelNotFoundError
from .family import family_of

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")


SDXL_KEYS = ("clip_l", "clip_g")  # an SDXL embedding's vectors for text_encoder and text_encoder_2


def _vectors(tensor: object, path: Path) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise ModelNotFoundError(f"{path}: not a textual-inversion embedding: it holds a {type(tensor).__name__}"
                                 f"{' of shape ' + str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else ''}, "
                                 "not a float tensor of vectors")
    tensor = tensor.detach().float()
    return tensor.unsqueeze(0) if tensor.ndim == 1 else tensor


def read_embedding_vectors(path: str | Path, token: str) -> dict[str | None, torch.Tensor]:
    """Read a textual-inversion embedding safely: its ``(num_vectors, dim)`` vectors per text encoder.

    Returns ``{"clip_l": ..., "clip_g": ...}`` for the SDXL format (one file, one tensor per text
    encoder), ``{None: ...}`` for the one-encoder formats: diffusers (``{token: tensor}``,
    ``.bin``/``.safetensors``/``.pt``) and A1111 (``{"string_to_param": {"*": tensor}}``).
    ``.pt``/``.bin`` files are read with ``torch.load(weights_only=True)``, so a file carrying
    pickled code is refused, not run.
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
    elif all(k in state for k in SDXL_KEYS):
        return {k: _vectors(state[k], path) for k in SDXL_KEYS}
    elif "string_to_param" in state:
        tensor = next(iter(state["string_to_param"].values()))
    elif "emb_params" in state:
        tensor = state["emb_params"]
    elif len(state) == 1:
        tensor = next(iter(state.values()))
    else:
        raise ModelNotFoundError(f"{path}: not a textual-inversion embedding (keys {sorted(state)[:5]})")
    return {None: _vectors(tensor, path)}


def read_embedding(path: str | Path, token: str) -> torch.Tensor:
    """Read a one-text-encoder (SD 1.x/2.x) textual-inversion embedding safely; returns ``(num_vectors, dim)``.

    See :func:`read_embedding_vectors` for the formats; an SDXL file is an error here.
    """
    vectors = read_embedding_vectors(path, token)
    if None not in vectors:
        raise ModelNotFoundError(f"{path} is an SDXL embedding ({' and '.join(SDXL_KEYS)} vectors), not one tensor")
    return vectors[None]


def _format(vectors: dict[str | None, torch.Tensor]) -> str:
    if None in vectors:
        return f"one tensor of {vectors[None].shape[1]}-d vectors (an SD 1.x/2.x embedding)"
    return "an SDXL embedding (" + ", ".join(f"{k}: {v.shape[1]}-d" for k, v in vectors.items()) + ")"


def load_textual_inversions(pipe: DiffusionPipeline, embeddings) -> None:
    """Add each ``(path, token)`` embedding to the pipeline's tokenizers and text encoders.

    A one-encoder model (SD 1.x/2.x) takes a one-tensor file; SDXL takes a file with a ``clip_l``
    tensor for ``text_encoder`` and a ``clip_g`` tensor for ``text_encoder_2`` (each loaded with
    diffusers' ``load_textual_inversion`` into its tokenizer and encoder).

    Raises:
        ModelNotFoundError: a file is missing or unreadable, of the other family's format, or its
            vectors' width does not match the model's text encoder.
    """
    if embeddings and not hasattr(pipe, "load_textual_inversion"):
        raise ModelNotFoundError(
            f"textual_inversions: a {type(pipe).__name__} cannot load textual-inversion embeddings (diffusers "
            f"gives it no load_textual_inversion); they work with SD 1.x/2.x and SDXL models"
        )
    encoders = family_of(pipe).text_encoders(pipe)
    names = [name for name, _, _ in encoders]
    for ti in embeddings:
        vectors = read_embedding_vectors(ti.path, ti.token)
        if not all(name in vectors for name in names):
            wanted = ("one tensor" if names == [None] else
                      "one safetensors file with " + " and ".join(repr(n) for n in names) + " tensors")
            raise ModelNotFoundError(
                f"embedding {ti.path} for {ti.token!r} holds {_format(vectors)}, but this {type(pipe).__name__} "
                f"has {len(names)} text encoder(s) and needs {wanted}: it was trained for another base model"
            )
        counts = {name: vectors[name].shape[0] for name in names}
        if len(set(counts.values())) > 1:
            raise ModelNotFoundError(
                f"embedding {ti.path} for {ti.token!r} has a different number of vectors per text encoder ({counts}): "
                "the token would take different positions in the two encoders' context"
            )
        for name, tokenizer, encoder in encoders:
            width = encoder.get_input_embeddings().weight.shape[1]
            if vectors[name].shape[1] != width:
                which = "" if name is None else f"{name} "
                raise ModelNotFoundError(
                    f"embedding {ti.path} for {ti.token!r} has {vectors[name].shape[1]}-d {which}vectors but this "
                    f"model's {which}text encoder uses {width}-d (SD 1.x: 768, SD 2.x: 1024, SDXL: clip_l 768 and "
                    f"clip_g 1280): it was trained for another base model"
                )
        for name, tokenizer, encoder in encoders:
            if ti.token in tokenizer.get_vocab():
                continue  # already loaded into this (cached) pipeline
            tensor = vectors[name]
            pipe.load_textual_inversion({ti.token: tensor if tensor.shape[0] > 1 else tensor[0]}, token=ti.token,
                                        tokenizer=tokenizer, text_encoder=encoder)
