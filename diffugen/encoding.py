"""Prompt → token ids → text embeddings, with emphasis weights and textual-inversion tokens.

We tokenize ourselves (rather than letting the pipeline do it) so that the token positions used
to read a word's cross-attention are exactly those the text encoder saw. Without emphasis the
ids and embeddings are identical to the pipeline's own ``encode_prompt``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from .attention import EncodedPrompt, find_word_tokens
from .prompts import parse_emphasis

logger = logging.getLogger(__name__)


def _convert(pipe, text: str) -> str:
    # Expands multi-vector textual-inversion tokens ("<tok>" → "<tok> <tok>_1 ...").
    return pipe.maybe_convert_prompt(text, pipe.tokenizer) if hasattr(pipe, "maybe_convert_prompt") else text


def tokenize(pipe, prompt: str) -> EncodedPrompt:
    """Tokenize a prompt (emphasis markers removed, weights kept) into the model's context length."""
    tok = pipe.tokenizer
    length = tok.model_max_length
    ids: list[int] = []
    weights: list[float] = []
    for chunk in parse_emphasis(prompt):
        chunk_ids = tok(_convert(pipe, chunk.text), add_special_tokens=False).input_ids
        ids += chunk_ids
        weights += [chunk.weight] * len(chunk_ids)
    truncated = len(ids) > length - 2
    ids, weights = ids[: length - 2], weights[: length - 2]
    pad = length - 2 - len(ids)
    return EncodedPrompt(
        ids=[tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * pad,
        weights=[1.0, *weights, 1.0] + [1.0] * pad,
        truncated=truncated,
    )


@torch.no_grad()
def embed(pipe, encoded: Sequence[EncodedPrompt]) -> torch.Tensor:
    """``(batch, 77, dim)`` text embeddings with emphasis applied.

    Each token's embedding is multiplied by its weight (as in A1111), then the prompt's overall
    scale is restored. A1111 restores the mean; we restore the standard deviation, because the
    mean of a layer-normalised output can be ~0 (it is for small or random text encoders) and
    dividing by it then blows the embeddings up.
    """
    device = pipe.text_encoder.device
    ids = torch.tensor([e.ids for e in encoded], device=device)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        mask = (ids != pipe.tokenizer.pad_token_id).long()
    hidden = pipe.text_encoder(ids, attention_mask=mask)[0]
    weights = torch.tensor([e.weights for e in encoded], device=device, dtype=hidden.dtype)
    if bool((weights != 1).any()):
        before = hidden.float().std(dim=(1, 2), keepdim=True)
        hidden = hidden * weights.unsqueeze(-1)
        hidden = hidden * (before / hidden.float().std(dim=(1, 2), keepdim=True).clamp_min(1e-6)).to(hidden.dtype)
    return hidden.to(pipe.unet.dtype)


def word_positions(pipe, encoded: EncodedPrompt, word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` in the encoded prompt (empty if absent/truncated)."""
    word_ids = pipe.tokenizer(_convert(pipe, word.lower()), add_special_tokens=False).input_ids
    body = encoded.ids
    return find_word_tokens(body, word_ids)
