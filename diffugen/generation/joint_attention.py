"""Word heatmaps from the joint attention of MMDiT transformers (SD3/3.5, FLUX.1), as diffusers processors.

In an MMDiT block the image tokens and the text tokens attend jointly: one softmax over the keys of
both. A word's heatmap is DAAM's carried over: the attention of the image-token queries onto the
word's text-token keys (the conditional half of the batch), summed over heads, layers and steps, then
aggregated as :class:`~.attention.HeatmapCollector` does (the mean over heads and layers, the mean
over the word's tokens, bicubic upsampling to the image, min-max normalisation). The probabilities are
those of the full joint softmax (normalised over image and text keys, then the text columns kept).

The processors compute each layer's output exactly as diffusers' own (``JointAttnProcessor2_0`` for
SD3, ``FluxAttnProcessor`` for FLUX; SDPA), so images are bit-identical with and without capture; on
the side they hand the image queries and the keys to :class:`JointHeatmapCollector`. Every attention
layer of the transformer records (they all work on the one token grid). Token positions index the
text sequence the transformer sees: for SD3 the 77 CLIP tokens then the T5 tokens, for FLUX the T5
tokens. SD3 stacks ``[image, text]`` in its joint sequence, FLUX ``[text, image]`` (and its
single-stream blocks receive that concatenation as one sequence).

With ``refine_power > 0`` (Dataset Diffusion's refinement) the image-image block of each layer's
attention, renormalised over the image keys, is averaged into the self-attention matrix
:meth:`~.attention.HeatmapCollector.refine` uses (SD3.5's image-only ``attn2`` layers included), when
the grid has at most 32×32 tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from .attention import HeatmapCollector, split_heads

# Query rows per softmax chunk are chosen so that one chunk's scores hold at most this many floats
# (a FLUX layer at 1024² has 4096 image queries × 4608 keys × 24 heads per image).
CHUNK_ELEMENTS = 1 << 26


class JointHeatmapCollector(HeatmapCollector):
    """A :class:`~.attention.HeatmapCollector` for joint attention on one token grid.

    ``reset(batch_size, token_indices, latent_size)`` as the parent's, with ``token_indices`` positions
    in the text sequence and ``latent_size`` the transformer's token grid (the family's
    :meth:`~.family.ModelFamily.latent_size`); :meth:`record` fills ``maps[name]`` with
    ``(batch, heads, T, h, w)`` summed over steps, so the parent's ``token_heatmaps`` and
    ``word_heatmaps`` read them unchanged.
    """

    def grid(self, seq_len: int) -> tuple[int, int, int]:
        """``(1, h, w)``: every layer attends over the whole token grid ``latent_size``."""
        h, w = self.latent_size
        if seq_len != h * w:
            raise ValueError(f"attention over {seq_len} image tokens does not match the token grid {self.latent_size}")
        return 1, h, w

    @torch.no_grad()
    def record(self, name: str, query: torch.Tensor, key: torch.Tensor, scale: float, text_start: int = 0) -> None:
        """Add one layer's image→text attention for this step.

        Args:
            query: ``(batch, heads, N, head_dim)``: the image tokens' queries (``N = h * w``); the last
                ``batch_size`` rows are the conditional prompts (``[unconditional, conditional]`` under CFG).
            key: ``(batch, heads, S, head_dim)``: every key of the joint attention (image and text).
            scale: the softmax scale (SDPA's default ``head_dim ** -0.5``).
            text_start: where the text tokens begin among the ``S`` keys.
        """
        _, h, w = self.grid(query.shape[2])
        b = self.batch_size
        q, k = query[-b:].float(), key[-b:].float()
        if self._index.device != q.device:
            self._index = self._index.to(q.device)  # once, not per layer and step
        columns = self._index + text_start
        heads, n, s = q.shape[1], q.shape[2], k.shape[2]
        rows = max(1, CHUNK_ELEMENTS // (b * heads * s))
        kt = k.transpose(-1, -2)
        probs = torch.cat([torch.softmax(q[:, :, i : i + rows] @ kt * scale, dim=-1).index_select(-1, columns)
                           for i in range(0, n, rows)], dim=2)  # (b, heads, N, T)
        probs = probs.transpose(-1, -2).reshape(b, heads, len(self.token_indices), h, w)
        if name in self.maps:
            self.maps[name] += probs
        else:
            self.maps[name] = probs


class JointHeatmapProcessor:
    """SD3's joint-attention processor: the output as ``JointAttnProcessor2_0`` (SDPA), attention to a collector.

    The joint sequence is ``[image, text]``; SD3.5's ``attn2`` layers (no ``encoder_hidden_states``) are
    image self-attention only and record only for the refinement.
    """

    def __init__(self, collector: JointHeatmapCollector, name: str, original=None):
        self.collector = collector
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = split_heads(attn, query, key, value)
        image_query, image_key = query, key

        if encoder_hidden_states is not None:
            context_query = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_key = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            context_value = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=2)
            key = torch.cat([key, context_key], dim=2)
            value = torch.cat([value, context_value], dim=2)

        collector = self.collector
        if collector.active:
            scale = head_dim**-0.5
            if encoder_hidden_states is not None:
                collector.record(self.name, image_query, key, scale, text_start=image_query.shape[2])
            if collector.refine_power:
                collector.record_self(image_query, image_key, scale)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (hidden_states[:, : residual.shape[1]],
                                                    hidden_states[:, residual.shape[1] :])
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class FluxHeatmapProcessor:
    """FLUX's attention processor: the output as ``FluxAttnProcessor`` (its attention dispatch), attention to a collector.

    Double-stream blocks concatenate ``[text, image]`` themselves; single-stream blocks receive that
    sequence whole, and their image tokens are its last ``h * w``. The original processor's attention
    backend is kept.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, collector: JointHeatmapCollector, name: str, original=None):
        self.collector = collector
        self.name = name
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        collector = self.collector
        if collector.active:
            # (batch, S, heads, head_dim) → (batch, heads, S, head_dim); the image tokens are the last h * w.
            q, k = query.transpose(1, 2), key.transpose(1, 2)
            image_start = q.shape[2] - collector.latent_size[0] * collector.latent_size[1]
            scale = attn.head_dim**-0.5
            collector.record(self.name, q[:, :, image_start:], k, scale, text_start=0)
            if collector.refine_power:
                collector.record_self(q[:, :, image_start:], k[:, :, image_start:], scale)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                              backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


@contextmanager
def capture_joint_heatmaps(transformer, processor_class: type, refine_power: int = 0) -> Iterator[JointHeatmapCollector]:
    """Install ``processor_class`` (:class:`JointHeatmapProcessor`, :class:`FluxHeatmapProcessor`) on every
    attention layer of ``transformer``; restore the old processors on exit.

    >>> with capture_joint_heatmaps(pipe.transformer, JointHeatmapProcessor) as collector:
    ...     collector.reset(1, [3], (32, 32)); pipe("a photo of a car", height=512, width=512)
    ...     maps = collector.word_heatmaps([[[3]]], (512, 512))
    """
    collector = JointHeatmapCollector("all", refine_power)
    original = transformer.attn_processors
    transformer.set_attn_processor({name: processor_class(collector, name, proc) for name, proc in original.items()})
    try:
        yield collector
    finally:
        collector.active = False
        collector._scores = collector._head_sum = None  # up to b × heads × 1024² floats
        transformer.set_attn_processor(original)
