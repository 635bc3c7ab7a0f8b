"""Word heatmaps from the joint attention of MMDiT transformers (SD3/3.5, FLUX.1, FLUX.2), as diffusers processors.

In an MMDiT block the image tokens and the text tokens attend jointly: one softmax over the keys of
both. A word's heatmap is DAAM's carried over: the attention of the image-token queries onto the
word's text-token keys (the conditional half of the batch), summed over heads, layers and steps, then
aggregated as :class:`~.attention.HeatmapCollector` does (the mean over heads and layers, the mean
over the word's tokens, bicubic upsampling to the image, min-max normalisation). The probabilities are
those of the full joint softmax (normalised over image and text keys, then the text columns kept).

The processors compute each layer's output exactly as diffusers' own (``JointAttnProcessor2_0`` for
SD3, ``FluxAttnProcessor`` for FLUX, ``Flux2AttnProcessor``/``Flux2ParallelSelfAttnProcessor`` for FLUX.2;
SDPA), so images are bit-identical with and without capture; on the side they hand the image queries
and the keys to :class:`JointHeatmapCollector`. Every attention layer of the transformer records (they
all work on the one token grid). Token positions index the text sequence the transformer sees: for SD3
the 77 CLIP tokens then the T5 tokens, for FLUX the T5 tokens, for FLUX.2 the chat-formatted Qwen3
tokens. SD3 stacks ``[image, text]`` in its joint sequence, FLUX and FLUX.2 ``[text, image]`` (and their
single-stream blocks receive that concatenation as one sequence).

With ``method="concept_attention"`` the maps come from ConceptAttention (Helbling et al., ICML 2025)
instead: each class word of a prompt becomes a *concept token* (:func:`concept_embedding`) that runs
through the joint blocks' text stream beside the prompt (:class:`ConceptStream`: the blocks' own
``norm1_context``, attention projections, ``norm2_context`` and ``ff_context``, with the step's
``temb``). Concept queries attend to the image tokens and to the concepts of their own prompt; no
image or text token attends to them, so images stay bit-identical. A layer's map of a concept is the
softmax over the image tokens of ``image_output · concept_output / sqrt(width)``, both attention
outputs taken before the output projections (the value space the joint attention shares: SD3's last
block has no text output projection); maps are averaged over the joint blocks and steps as the
cross-attention ones are. FLUX's single-stream blocks (FLUX.1's and FLUX.2's) have no text stream and add
nothing; concept tokens take no rotary embedding (position 0, as FLUX.1's text ids all are). A word said
twice has one concept, so both occurrences get its map. Departures from the paper's code, for a
dataset tool: a concept token is the word's embedding at its first token when the word is encoded
alone as the family encodes a prompt; it uses the prompt's ``temb`` (the paper's code embeds the
concepts' own pooled text); every joint block contributes (the paper picks FLUX's blocks 10–18).

With ``refine_power > 0`` (Dataset Diffusion's refinement) the image-image block of each layer's
attention, renormalised over the image keys, is averaged into the self-attention matrix
:meth:`~.attention.HeatmapCollector.refine` uses (SD3.5's image-only ``attn2`` layers included). A grid of more
than 32×32 tokens (SD3 and FLUX from 768² on) is pooled: the attention between the queries' and keys' means over
2×2 blocks (3×3 …), so the refinement runs at every size at the cost it has at 512².
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Sequence, get_args

import torch
import torch.nn.functional as F

from ..errors import DiffuGenError
from .attention import HeatmapCollector, split_heads

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from .family import ModelFamily

HeatmapMethod = Literal["cross_attention", "concept_attention"]

# Query rows per softmax chunk are chosen so that one chunk's scores hold at most this many floats
# (a FLUX layer at 1024² has 4096 image queries × 4608 keys × 24 heads per image).
CHUNK_ELEMENTS = 1 << 26
_CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA's output of ``(batch, heads, S, head_dim)`` inputs and, where the kernel SDPA runs returns it, each
    query row's logsumexp ``(batch, heads, S)`` (float32) that the record then needs in place of its own softmax.

    On the CPU SDPA runs its flash kernel whenever these checks (PyTorch's ``use_flash_attention_cpp``) hold;
    calling that kernel directly is the same call, so the output is SDPA's bit for bit. Elsewhere (CUDA picks
    among several kernels) this is plain SDPA and the logsumexp is ``None``.
    """
    if (query.device.type == "cpu" and torch.backends.cuda.flash_sdp_enabled()
            and all(t.dim() == 4 and t.stride(-1) == 1 and t.dtype == query.dtype for t in (query, key, value))
            and query.dtype in _CPU_FLASH_DTYPES and query.shape[-1] == key.shape[-1] == value.shape[-1]
            and query.shape[2] > 0 and key.shape[2] > 0 and not torch.is_grad_enabled()):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, False)
        return out, lse
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False), None


class JointHeatmapCollector(HeatmapCollector):
    """A :class:`~.attention.HeatmapCollector` for joint attention on one token grid.

    ``reset(batch_size, token_indices, latent_size)`` as the parent's, with ``token_indices`` positions
    in the text sequence and ``latent_size`` the transformer's token grid (the family's
    :meth:`~.family.ModelFamily.latent_size`); :meth:`record` fills ``maps[name]`` with
    ``(batch, heads, T, h, w)`` summed over steps, so the parent's ``token_heatmaps`` and
    ``word_heatmaps`` read them unchanged.
    """

    pools_self_attention = True  # every block attends over the one token grid: pool it where it is over 32×32

    def __init__(self, layers="all", refine_power: int = 0, method: HeatmapMethod = "cross_attention"):
        super().__init__(layers, refine_power)
        self.method: HeatmapMethod = method
        self.stream: ConceptStream | None = None  # set by capture_joint_heatmaps for "concept_attention"
        self.text_length = 0  # FLUX: the text tokens before the image's in the joint sequence
        self._concept_of: torch.Tensor | None = None

    def set_concepts(self, embeddings: Sequence[Sequence[torch.Tensor]], positions: Sequence[Sequence[Sequence[int]]]) -> None:
        """Give this batch's concept tokens (ConceptAttention), after :meth:`reset`.

        Args:
            embeddings: ``embeddings[i][j]``: ``(joint_attention_dim,)``, the concept token of prompt ``i``'s
                class word ``j`` (:func:`concept_embedding`).
            positions: ``positions[i][j]``: that word's token positions (among ``token_indices``), whose
                maps become the concept's map.
        """
        b = len(embeddings)
        count = max([len(e) for e in embeddings] + [1])
        first = next((e for row in embeddings for e in row), None)
        if first is None:
            self.stream.start(None, None)
            return
        tokens = first.new_zeros(b, count, first.shape[-1])
        valid = torch.zeros(b, count, dtype=torch.bool, device=first.device)
        column = {t: k for k, t in enumerate(self.token_indices)}
        concept_of = torch.full((b, len(self.token_indices)), count, dtype=torch.long)  # `count`: a zero map
        for i, row in enumerate(embeddings):
            for j, e in enumerate(row):
                tokens[i, j], valid[i, j] = e, True
                for t in positions[i][j]:
                    concept_of[i, column[t]] = j
        self._concept_of = concept_of.to(first.device)
        self.stream.start(tokens, valid)

    @torch.no_grad()
    def record_concepts(self, name: str, concepts: torch.Tensor, image: torch.Tensor) -> None:
        """Add one joint block's ConceptAttention maps for this step.

        Args:
            concepts: ``(batch_size, C, D)``: the concept tokens' attention outputs.
            image: ``(batch_size, N, D)``: the conditional image tokens' attention outputs (``N = h * w``).
        """
        _, h, w = self.grid(image.shape[1])
        b, n = image.shape[0], image.shape[1]
        scores = concepts.float() @ image.float().transpose(1, 2) * image.shape[-1] ** -0.5
        probs = torch.softmax(scores, dim=-1)  # (b, C, N): where in the image each concept is
        probs = torch.cat([probs, probs.new_zeros(b, 1, n)], dim=1)
        maps = probs.gather(1, self._concept_of[:, :, None].expand(-1, -1, n))  # (b, T, N)
        self.add(name, maps.reshape(b, 1, len(self.token_indices), h, w))

    def grid(self, seq_len: int) -> tuple[int, int, int]:
        """``(1, h, w)``: every layer attends over the whole token grid ``latent_size``."""
        h, w = self.latent_size
        if seq_len != h * w:
            raise ValueError(f"attention over {seq_len} image tokens does not match the token grid {self.latent_size}")
        return 1, h, w

    @torch.no_grad()
    def record(self, name: str, query: torch.Tensor, key: torch.Tensor, scale: float, text_start: int = 0,
               lse: torch.Tensor | None = None) -> None:
        """Add one layer's image→text attention for this step.

        Args:
            query: ``(batch, heads, N, head_dim)``: the image tokens' queries (``N = h * w``); the last
                ``batch_size`` rows are the conditional prompts (``[unconditional, conditional]`` under CFG).
            key: ``(batch, heads, S, head_dim)``: every key of the joint attention (image and text).
            scale: the softmax scale (SDPA's default ``head_dim ** -0.5``).
            text_start: where the text tokens begin among the ``S`` keys.
            lse: ``(batch, heads, N)``: the image rows' logsumexp of the joint scores, as the attention kernel
                computed it (:func:`attention_with_lse`). With it only the class words' ``T`` columns are
                computed, ``exp(q·kᵀ·scale - lse)``, not all ``S`` (on tiny SD3's 256 image and 333 text keys:
                0.7 ms in place of 5.3 ms at batch 4); without it, the full softmax.
        """
        _, h, w = self.grid(query.shape[2])
        b = self.batch_size
        q, k = query[-b:].float(), key[-b:].float()
        if self._index.device != q.device:
            self._index = self._index.to(q.device)  # once, not per layer and step
        columns = self._index + text_start
        heads, n, s = q.shape[1], q.shape[2], k.shape[2]
        if lse is not None:
            probs = torch.exp(q @ k.index_select(2, columns).transpose(-1, -2) * scale - lse[-b:, :, :, None].float())
        else:
            rows = max(1, CHUNK_ELEMENTS // (b * heads * s))
            kt = k.transpose(-1, -2)
            probs = torch.cat([torch.softmax(q[:, :, i : i + rows] @ kt * scale, dim=-1).index_select(-1, columns)
                               for i in range(0, n, rows)], dim=2)  # (b, heads, N, T)
        self.add(name, probs.transpose(-1, -2).reshape(b, heads, len(self.token_indices), h, w))


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
        image_query, image_key, image_value = query, key, value

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
        hidden_states, lse = attention_with_lse(query, key, value)
        if collector.active:
            scale = head_dim**-0.5
            n = image_query.shape[2]
            if encoder_hidden_states is not None and collector.method == "cross_attention":
                collector.record(self.name, image_query, key, scale, text_start=n, lse=None if lse is None else lse[:, :, :n])
            if collector.refine_power:
                collector.record_self(image_query, image_key, scale)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if collector.active and collector.stream is not None and encoder_hidden_states is not None:
            collector.stream.attend(self.name, attn, image_key, image_value, hidden_states[:, : residual.shape[1]])
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
    sequence whole. The image tokens are the ``h * w`` after the text: FLUX Kontext (and FLUX.2, editing or
    inpainting) appends its reference image's tokens after them, which keys include (the joint softmax runs
    over them) but no map is made of. The original processor's attention backend is kept. FLUX.2's
    double-stream ``Flux2AttnProcessor`` computes the same (its projections, norms and output layers are
    FLUX.1's), so this class serves those blocks too.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, collector: JointHeatmapCollector, name: str, original=None):
        self.collector = collector
        self.name = name
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
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

        hidden_states, lse = self.attend(query, key, value, attention_mask)
        image = self.observe(query, key, attn.head_dim, encoder_hidden_states, lse)
        collector = self.collector
        if collector.active and collector.stream is not None and encoder_hidden_states is not None:
            collector.stream.attend(self.name, attn, key[:, image].transpose(1, 2), value[:, image].transpose(1, 2),
                                    hidden_states[:, image])
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def observe(self, query: torch.Tensor, key: torch.Tensor, head_dim: int, encoder_hidden_states=None,
                lse: torch.Tensor | None = None) -> slice:
        """Hand one layer's attention to the collector; the image tokens' slice of the joint sequence.

        ``query``, ``key``: ``(batch, S, heads, head_dim)`` as the layer attends with them (norms and rotary
        embedding applied), ``[text, image, reference image…]``; ``encoder_hidden_states``: a double-stream
        block's text input (single-stream blocks reuse the text length the double-stream ones, run first, saw);
        ``lse``: ``(batch, heads, S)`` from :meth:`attend`, or ``None``.
        """
        collector = self.collector
        if encoder_hidden_states is not None:
            collector.text_length = encoder_hidden_states.shape[1]
        image = slice(collector.text_length, collector.text_length + collector.latent_size[0] * collector.latent_size[1])
        if collector.active:
            q, k = query.transpose(1, 2), key.transpose(1, 2)  # → (batch, heads, S, head_dim)
            scale = head_dim**-0.5
            if collector.method == "cross_attention":
                collector.record(self.name, q[:, :, image], k, scale, text_start=0,
                                 lse=None if lse is None else lse[:, :, image])
            if collector.refine_power:
                collector.record_self(q[:, :, image], k[:, :, image], scale)
        return image

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask=None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, S, heads * head_dim)``: the layer's attention through the original processor's backend, and
        the rows' logsumexp ``(batch, heads, S)`` where diffusers' backend is SDPA (its ``native``, as diffusers
        runs it: inputs permuted to ``(batch, heads, S, head_dim)``) and :func:`attention_with_lse` has it."""
        from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn

        backend = self._attention_backend or _AttentionBackendRegistry.get_active_backend()[0]
        lse = None
        if (AttentionBackendName(backend) == AttentionBackendName.NATIVE and attention_mask is None
                and self._parallel_config is None):
            hidden_states, lse = attention_with_lse(*(x.permute(0, 2, 1, 3) for x in (query, key, value)))
            hidden_states = hidden_states.permute(0, 2, 1, 3)
        else:
            hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                                  backend=self._attention_backend, parallel_config=self._parallel_config)
        return hidden_states.flatten(2, 3).to(query.dtype), lse


class Flux2SingleHeatmapProcessor(FluxHeatmapProcessor):
    """FLUX.2's single-stream processor: the output as ``Flux2ParallelSelfAttnProcessor`` (one projection gives the
    attention's QKV and the MLP's input, one projects both outputs), attention to a collector as FLUX's.

    FLUX.2's double-stream blocks compute as FLUX.1's (:class:`FluxHeatmapProcessor` serves them).
    """

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        hidden_states = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = hidden_states.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp_hidden_states = torch.split(hidden_states, [local_qkv, hidden_states.shape[-1] - local_qkv], dim=-1)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        hidden_states, lse = self.attend(query, key, value, attention_mask)
        self.observe(query, key, attn.head_dim, lse=lse)
        return attn.to_out(torch.cat([hidden_states, attn.mlp_act_fn(mlp_hidden_states)], dim=-1))


class ConceptStream:
    """ConceptAttention's concept tokens, carried through the joint blocks' text stream beside the prompt.

    Hooks on the transformer (each call restarts the stream from ``context_embedder(tokens)``) and on each
    joint block: before it, the block's ``norm1_context`` of the concept states with the conditional rows'
    ``temb`` (FLUX.2: modulated by the ``temb_mod_txt`` the transformer hands every block); in its attention (:meth:`attend`, called by the processor), the concepts' attention and the
    maps; after it, the block's residual, ``norm2_context`` and ``ff_context`` update (none in SD3's last,
    ``context_pre_only`` block).
    """

    def __init__(self, collector: JointHeatmapCollector, transformer):
        self.collector = collector
        self.transformer = transformer
        self.tokens: torch.Tensor | None = None  # (b, C, joint_attention_dim)
        self.valid: torch.Tensor | None = None  # (b, C): the prompt's own concepts
        self.hidden: torch.Tensor | None = None  # (b, C, D): the concepts' residual stream
        self._initial: torch.Tensor | None = None
        self._pending: tuple | None = None  # the running block's normalised concepts and gates
        self._output: torch.Tensor | None = None
        self._handles: list = []

    def start(self, tokens: torch.Tensor | None, valid: torch.Tensor | None) -> None:
        """A new batch's concept tokens (``None``: no class word has tokens)."""
        self.tokens, self.valid, self._initial, self.hidden = tokens, valid, None, None

    def install(self) -> None:
        self._handles.append(self.transformer.register_forward_pre_hook(self._begin_step))
        for block in self.transformer.transformer_blocks:
            self._handles.append(block.register_forward_pre_hook(self._before_block, with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._after_block))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _running(self) -> bool:
        return self.collector.active and self.tokens is not None

    def _begin_step(self, module, args) -> None:
        if not self._running():
            return
        if self._initial is None:
            embedder = self.transformer.context_embedder
            self._initial = embedder(self.tokens.to(embedder.weight.device, embedder.weight.dtype))
        self.hidden = self._initial

    def _before_block(self, block, args, kwargs) -> None:
        if not self._running():
            return
        b = self.hidden.shape[0]
        if "temb_mod_txt" in kwargs:  # FLUX.2: the text stream's modulation is the transformer's, shared by the blocks
            from diffusers.models.transformers.transformer_flux2 import Flux2Modulation

            mod = kwargs["temb_mod_txt"]
            (shift_msa, scale_msa, gate_msa), mlp = Flux2Modulation.split(mod[-b:] if mod.shape[0] > 1 else mod, 2)
            self._pending = (block.norm1_context(self.hidden) * (1 + scale_msa) + shift_msa, (gate_msa, *mlp))
            return
        temb = kwargs["temb"][-b:]
        if getattr(block, "context_pre_only", False):
            self._pending = (block.norm1_context(self.hidden, temb), None)
        else:
            normed, *gates = block.norm1_context(self.hidden, emb=temb)
            self._pending = (normed, [g.unsqueeze(1) for g in gates])  # (b, 1, D), as FLUX.2's modulation is

    def attend(self, name: str, attn, image_key: torch.Tensor, image_value: torch.Tensor, image_out: torch.Tensor) -> None:
        """The concepts' attention in one joint layer, and its maps.

        Args:
            image_key, image_value: ``(batch, heads, N, head_dim)``, as the layer's joint attention used them
                (after its norms and rotary embedding); the last ``batch_size`` rows are conditional.
            image_out: ``(batch, N, heads * head_dim)``: the image tokens' attention output, before ``to_out``.
        """
        if self._pending is None:
            return
        normed = self._pending[0]
        b, count = normed.shape[:2]
        heads, head_dim = image_key.shape[1], image_key.shape[-1]

        def project(linear, norm):
            x = linear(normed).view(b, count, heads, head_dim)
            return (norm(x) if norm is not None else x).transpose(1, 2)

        q = project(attn.add_q_proj, attn.norm_added_q)
        k = torch.cat([project(attn.add_k_proj, attn.norm_added_k), image_key[-b:]], dim=2)
        v = torch.cat([project(attn.add_v_proj, None), image_value[-b:]], dim=2)
        keep = torch.cat([self.valid.to(q.device), self.valid.new_ones(b, image_key.shape[2]).to(q.device)], dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        out = out.transpose(1, 2).reshape(b, count, heads * head_dim)
        self.collector.record_concepts(name, out, image_out[-b:])
        self._output = None if getattr(attn, "context_pre_only", False) else attn.to_add_out(out)

    def _after_block(self, block, args, output) -> None:
        if not self._running() or self._pending is None:
            return
        gates, out = self._pending[1], self._output
        self._pending = self._output = None
        if gates is None or out is None:
            return
        gate_msa, shift_mlp, scale_mlp, gate_mlp = gates  # each (b, 1, D)
        h = self.hidden + gate_msa * out
        normed = block.norm2_context(h) * (1 + scale_mlp) + shift_mlp
        self.hidden = h + gate_mlp * block.ff_context(normed)


def concept_embedding(family: ModelFamily, pipe: DiffusionPipeline, word: str) -> torch.Tensor:
    """``(joint_attention_dim,)``: ConceptAttention's token for ``word``: the text embedding at the word's first
    token when the word alone is encoded as the family encodes a prompt (SD3: its first CLIP position; FLUX:
    its first T5 position)."""
    batch = family.encode(pipe, [word], "")
    positions = family.word_positions(pipe, batch.prompts[0], word)
    if not positions:
        raise DiffuGenError(f"class word {word!r} has no tokens of its own when encoded alone")
    return batch.pipeline_kwargs["prompt_embeds"][0, positions[0]]


@contextmanager
def capture_joint_heatmaps(transformer, processor_class: Callable, refine_power: int = 0,
                           method: HeatmapMethod = "cross_attention") -> Iterator[JointHeatmapCollector]:
    """Install ``processor_class`` (:class:`JointHeatmapProcessor`, :class:`FluxHeatmapProcessor`, or a function of
    the same arguments ``(collector, name, original)`` choosing one per layer: FLUX.2's) on every attention layer
    of ``transformer`` (and, for ``method="concept_attention"``, the :class:`ConceptStream` hooks on its joint
    blocks); restore the old processors on exit.

    >>> with capture_joint_heatmaps(pipe.transformer, JointHeatmapProcessor) as collector:
    ...     collector.reset(1, [3], (32, 32)); pipe("a photo of a car", height=512, width=512)
    ...     maps = collector.word_heatmaps([[[3]]], (512, 512))
    """
    if method not in get_args(HeatmapMethod):
        raise DiffuGenError(f"heatmap_method {method!r}: expected one of {list(get_args(HeatmapMethod))}")
    collector = JointHeatmapCollector("all", refine_power, method)
    original = transformer.attn_processors
    transformer.set_attn_processor({name: processor_class(collector, name, proc) for name, proc in original.items()})
    if method == "concept_attention":
        collector.stream = ConceptStream(collector, transformer)
        collector.stream.install()
    try:
        yield collector
    finally:
        collector.active = False
        collector._scores = collector._head_sum = None  # up to b × heads × 1024² floats
        if collector.stream is not None:
            collector.stream.remove()
            collector.stream = None
        transformer.set_attn_processor(original)
