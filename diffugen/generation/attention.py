"""Cross-attention heatmaps of words (DAAM, Tang et al. 2022, "What the DAAM"), as a diffusers processor.

:class:`HeatmapProcessor` replaces the processor of the UNet's cross-attention layers (``attn2``)
through ``unet.set_attn_processor`` while :func:`capture_heatmaps` is active. It computes the
attention output exactly as diffusers' ``AttnProcessor2_0`` does (SDPA), so images are unchanged,
and on the side the softmax attention of the conditional half of the batch for the tokens we were
asked about. Per layer and head these maps are summed over the denoising steps at the layer's own
resolution; :meth:`HeatmapCollector.word_heatmaps` then follows daam's aggregation: bicubic
upsampling of each (layer, head) map to the latent size, clamping at 0, the mean over layers and
heads, the mean over a word's tokens, bicubic upsampling to the image size, min-max normalisation.

Differences from daam 0.2.0, all deliberate: any image size and aspect ratio (daam: square 512/768),
a batch of prompts (daam: one), only the tokens asked for are kept (daam keeps all 77), and
``layers="all"`` adds the layers daam skips (the mid block and the layers at 1/8 latent
resolution); the default ``layers="daam"`` skips them as daam does.

Optional refinement (Dataset Diffusion, Nguyen et al., NeurIPS 2023): with ``refine_power=τ > 0`` the
same processor also sits on the self-attention layers (``attn1``) and, at the finest resolution with
at most 32×32 positions (Dataset Diffusion's choice for SD at 512 px), averages their attention
matrix ``A`` (``N × N``, rows sum to 1) over heads, layers and steps. Each token map, resampled to
that grid, is then multiplied by ``A^τ``: a position takes the attention-weighted mean of the map over
the positions it attends to, which in practice are those of the same object, so the map fills the
object and stops at its edges. Dataset Diffusion averages every layer of that resolution
(``refine_layers="all"``); by default only the down (encoder) path's layers record
(``refine_layers="down"``): on the toy-world benchmark they label as well (Otsu IoU 0.635 vs 0.618)
at a third of the cost, and the up path's alone label worse (0.533). A transformer has one token grid
in every block, so where it is over 32×32 the collector pools it (:meth:`HeatmapCollector.record_self`).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LayerChoice = Literal["daam", "all"]
RefineLayers = Literal["down", "all"]


def is_cross_attention(name: str) -> bool:
    return name.endswith("attn2.processor")


def is_self_attention(name: str) -> bool:
    return name.endswith("attn1.processor")


def selected_layer(name: str, layers: LayerChoice, refine: bool = False, refine_layers: RefineLayers = "down") -> bool:
    """Which processors to replace: cross-attention ones, without the mid block unless ``layers="all"``;
    with ``refine``, the self-attention ones too: of the down blocks, or all with ``refine_layers="all"``
    (of those, the ones at the finest grid of at most 32×32 positions record)."""
    if refine and is_self_attention(name):
        return refine_layers == "all" or name.startswith("down_blocks.")
    return is_cross_attention(name) and (layers == "all" or not name.startswith("mid_block"))


MAX_SELF_POSITIONS = 32 * 32  # self-attention matrices are (N × N): keep N at most 1024


def pooled_factor(h: int, w: int) -> int:
    """The smallest factor ``f`` whose ``ceil(h / f) × ceil(w / f)`` grid holds at most :data:`MAX_SELF_POSITIONS`."""
    f = 2
    while math.ceil(h / f) * math.ceil(w / f) > MAX_SELF_POSITIONS:
        f += 1
    return f


def pool_tokens(x: torch.Tensor, size: tuple[int, int], factor: int) -> torch.Tensor:
    """``(b, heads, N, d)`` tokens on an ``h × w`` grid → their means over ``factor × factor`` blocks."""
    b, heads, n, d = x.shape
    grid = x.transpose(-1, -2).reshape(b * heads, d, *size)
    pooled = F.avg_pool2d(grid, factor, ceil_mode=True)
    return pooled.reshape(b, heads, d, -1).transpose(-1, -2)


class HeatmapCollector:
    """Accumulates per-layer, per-head cross-attention of selected tokens over the denoising steps.

    Set up before each pipeline call with :meth:`reset`; read after it with :meth:`word_heatmaps`.
    """

    pools_self_attention = False  # a UNet has coarser self-attention layers to record instead

    def __init__(self, layers: LayerChoice = "daam", refine_power: int = 0):
        self.layers = layers
        self.refine_power = refine_power
        self.method = "cross_attention"  # the joint-attention collector also offers "concept_attention"
        self.active = False
        self.batch_size = 0
        self.token_indices: list[int] = []
        self.latent_size = (0, 0)
        self.maps: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}  # denoising steps each layer's map sums
        # Per grid size N (<= MAX_SELF_POSITIONS): (batch, N, N) summed over heads' means, layers and steps.
        self.self_attention: dict[int, torch.Tensor] = {}
        self.self_counts: dict[int, int] = {}
        self.self_grids: dict[int, tuple[int, int]] = {}  # each N's (h, w)
        self._index: torch.Tensor | None = None
        self._grids: dict[int, tuple[int, int, int]] = {}
        self._scores: torch.Tensor | None = None  # record_self's buffers
        self._head_sum: torch.Tensor | None = None

    def reset(self, batch_size: int, token_indices: Sequence[int], latent_size: tuple[int, int]) -> None:
        """Start a new generation of ``batch_size`` prompts.

        Args:
            token_indices: positions in the 77-token context (0 is the start token) to keep maps for.
            latent_size: ``(height // 8, width // 8)`` for an 8× VAE: the grid maps are aggregated on.
        """
        self.batch_size = batch_size
        self.token_indices = list(token_indices)
        self.latent_size = latent_size
        self.maps = {}
        self.steps = {}
        self.self_attention = {}
        self.self_counts = {}
        self.self_grids = {}
        self._index = torch.tensor(self.token_indices, dtype=torch.long)
        self._grids = {}
        self.active = bool(self.token_indices)

    def grid(self, seq_len: int) -> tuple[int, int, int]:
        """``(factor, h, w)`` of a layer whose query has ``seq_len`` positions.

        UNet downsampling halves with ceil, so a layer ``f`` times coarser than the latent holds
        ``ceil(H/f) × ceil(W/f)`` positions.
        """
        if seq_len not in self._grids:
            lh, lw = self.latent_size
            for k in range(8):
                f = 2**k
                h, w = math.ceil(lh / f), math.ceil(lw / f)
                if h * w == seq_len:
                    self._grids[seq_len] = (f, h, w)
                    break
            else:
                raise ValueError(f"attention over {seq_len} positions does not match latent size {self.latent_size}")
        return self._grids[seq_len]

    @torch.no_grad()
    def record(self, name: str, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Add one layer's attention for this step.

        Args:
            query: ``(batch, heads, seq_len, head_dim)``; the last ``batch_size`` rows are the
                conditional prompts (diffusers stacks ``[unconditional, conditional]`` for CFG).
            key: ``(batch, heads, tokens, head_dim)``.
        """
        factor, h, w = self.grid(query.shape[2])
        if self.layers == "daam" and factor == 8:
            return  # daam skips the coarsest layers (8×8 at 512 px)
        b = self.batch_size
        q, k = query[-b:].float(), key[-b:].float()
        probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # (b, heads, seq_len, tokens)
        if self._index.device != probs.device:
            self._index = self._index.to(probs.device)  # once, not per layer and step
        probs = probs.index_select(-1, self._index)  # (b, heads, seq_len, T)
        self.add(name, probs.transpose(-1, -2).reshape(b, probs.shape[1], len(self.token_indices), h, w))

    def add(self, name: str, maps: torch.Tensor) -> None:
        """Add layer ``name``'s ``(batch, heads, T, h, w)`` maps of one step (they are averaged over steps)."""
        if name in self.maps:
            self.maps[name] += maps
        else:
            self.maps[name] = maps
        self.steps[name] = self.steps.get(name, 0) + 1

    @torch.no_grad()
    def record_self(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Add one self-attention layer's head-mean attention matrix (at most 32×32 positions).

        A layer over more positions is skipped (a UNet has coarser ones), unless the collector pools
        (:attr:`pools_self_attention`, a transformer's one token grid): then the attention is taken between the
        means of the queries and of the keys over ``f × f`` blocks, ``f`` the smallest factor that leaves at most
        32×32 blocks (:func:`pooled_factor`). That costs what a 32×32 grid costs. It is not the block average of
        the full matrix: that one took 1.5× the bare time on tiny FLUX at 1024² and labelled the toy MMDiT
        worse (BENCHMARKS.md).

        Args:
            query, key: ``(batch, heads, N, head_dim)``; the last ``batch_size`` rows are conditional.
        """
        _, h, w = self.grid(query.shape[2])
        factor = 1 if h * w <= MAX_SELF_POSITIONS else pooled_factor(h, w) if self.pools_self_attention else 0
        if not factor:
            return  # (N × N) too large: a UNet's coarser layers record instead
        grid = (math.ceil(h / factor), math.ceil(w / factor))
        n = grid[0] * grid[1]
        if self.self_attention and n < max(self.self_attention):
            return  # coarser than a grid already recorded (only the finest is used)
        b = self.batch_size
        q, k = query[-b:].float() * scale, key[-b:].float()
        heads = q.shape[1]
        if factor > 1:
            q, k = pool_tokens(q, (h, w), factor), pool_tokens(k, (h, w), factor)
        head_sum = self._head_mean_attention(q, k)
        self.self_grids[n] = grid
        if n in self.self_attention:
            self.self_attention[n].add_(head_sum, alpha=1.0 / heads)
        else:
            self.self_attention[n] = head_sum / heads
        self.self_counts[n] = self.self_counts.get(n, 0) + 1

    def _head_mean_attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(b, N, N)``: ``softmax(q kᵀ)`` summed over heads, for ``(b, heads, N, d)`` (``q`` scaled)."""
        b, heads, n = q.shape[:3]
        # Softmax in place in buffers kept across calls: fresh (b, heads, N, N) tensors per layer and
        # step cost 2–4× more on the CPU (allocation and page faults of tens of MB).
        if self._scores is None or self._scores.shape != (b, heads, n, n) or self._scores.device != q.device:
            self._scores = torch.empty(b, heads, n, n, device=q.device)
            self._head_sum = torch.empty(b, n, n, device=q.device)
        s = torch.matmul(q, k.transpose(-1, -2), out=self._scores)
        s.sub_(s.amax(-1, keepdim=True)).exp_()
        s.div_(s.sum(-1, keepdim=True))
        return torch.sum(s, 1, out=self._head_sum)

    def refine_grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of the finest recorded self-attention grid (at most 32×32 positions), or ``None``."""
        if not self.self_attention:
            return None
        return self.self_grids[max(self.self_attention)]

    @torch.no_grad()
    def refine(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dataset Diffusion's refinement: ``A^τ @ map`` on the finest recorded self-attention grid.

        Args:
            tokens: ``(batch, T, latent_h, latent_w)`` token maps.

        Returns:
            The refined maps, same shape; the maps unchanged (with a warning) when the UNet has no
            self-attention layer of at most 32×32 positions.
        """
        grid = self.refine_grid()
        if grid is None:
            logger.warning("heatmap refinement skipped: the UNet has no self-attention layer of at most %d positions "
                           "at latent size %s", MAX_SELF_POSITIONS, self.latent_size)
            return tokens
        h, w = grid
        n = h * w
        b, t = tokens.shape[:2]
        small = F.interpolate(tokens, size=(h, w), mode="bilinear", antialias=True) if (h, w) != self.latent_size else tokens
        a = self.self_attention[n] / self.self_counts[n]  # (b, N, N), rows sum to 1
        a_pow = torch.linalg.matrix_power(a, self.refine_power)
        refined = (a_pow @ small.reshape(b, t, n).transpose(1, 2)).transpose(1, 2).reshape(b, t, h, w)
        if (h, w) != self.latent_size:
            refined = F.interpolate(refined, size=self.latent_size, mode="bicubic").clamp_(min=0)
        return refined

    @torch.no_grad()
    def token_heatmaps(self) -> torch.Tensor:
        """``(batch, T, latent_h, latent_w)``: daam's global heatmap for each kept token, in units of
        attention: the softmax probability of the token, averaged over steps, layers and heads."""
        if not self.maps:
            raise RuntimeError("no cross-attention was recorded: was the pipeline run inside capture_heatmaps()?")
        total, count = None, 0
        for name, m in self.maps.items():
            m = m / self.steps.get(name, 1)
            b, heads, t, h, w = m.shape
            up = F.interpolate(m.reshape(b * heads, t, h, w), size=self.latent_size, mode="bicubic")
            up = up.clamp_(min=0).reshape(b, heads, t, *self.latent_size).sum(1)
            total = up if total is None else total + up
            count += heads
        total = total / count
        return self.refine(total) if self.refine_power else total

    @torch.no_grad()
    def word_heatmaps(self, words: Sequence[Sequence[Sequence[int]]], image_size: tuple[int, int],
                      normalize: bool = True) -> list[list[torch.Tensor]]:
        """Per prompt, per word: the word's heatmap at image size, min-max normalised to [0, 1].

        Args:
            words: ``words[i][j]`` = token positions of word ``j`` in prompt ``i`` (all occurrences);
                each must be among the ``token_indices`` given to :meth:`reset`.
            image_size: ``(height, width)``.
            normalize: ``False`` keeps the map in units of attention (:meth:`token_heatmaps`, the mean
                over the word's tokens): how much the image attends to the word, comparable across
                words and images, which the label score needs.

        Returns:
            ``maps[i][j]``: float32 tensor ``(height, width)`` on the CPU.
        """
        tokens = self.token_heatmaps()
        column = {t: i for i, t in enumerate(self.token_indices)}
        out = []
        for i, prompt_words in enumerate(words):
            row = []
            for idxs in prompt_words:
                m = tokens[i, [column[t] for t in idxs]].mean(0)
                m = F.interpolate(m[None, None], size=image_size, mode="bicubic")[0, 0]
                if not normalize:
                    row.append(m.cpu())
                    continue
                span = m.max() - m.min()  # no epsilon: refined maps can span only ~1e-6
                m = (m - m.min()) / span if span > 0 else torch.zeros_like(m)
                row.append(m.cpu())
            out.append(row)
        return out


def split_heads(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(batch, seq, heads * head_dim)`` projections → ``(batch, heads, seq, head_dim)``, with the layer's
    query/key norms applied, as diffusers' processors do before SDPA."""
    batch_size, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


class HeatmapProcessor:
    """A cross-attention processor: SDPA output as ``AttnProcessor2_0``, attention maps to a collector."""

    def __init__(self, collector: HeatmapCollector, name: str):
        self.collector = collector
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = split_heads(attn, query, key, value)

        if self.collector.active:
            if cross:
                self.collector.record(self.name, query, key, attn.scale)
            elif self.collector.refine_power:
                self.collector.record_self(query, key, attn.scale)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def capture_heatmaps(unet, layers: LayerChoice = "daam", refine_power: int = 0,
                     refine_layers: RefineLayers = "down") -> Iterator[HeatmapCollector]:
    """Install :class:`HeatmapProcessor` on the UNet's cross-attention layers; restore the old ones on exit.

    ``refine_power > 0`` also installs it on the self-attention layers (``refine_layers``: those of the
    down blocks, or all) and refines the maps with ``A^refine_power`` (Dataset Diffusion; see the
    module docstring).

    >>> with capture_heatmaps(pipe.unet) as collector:
    ...     collector.reset(1, [5], (64, 64)); pipe("a photo of a car")
    ...     maps = collector.word_heatmaps([[[5]]], (512, 512))
    """
    collector = HeatmapCollector(layers, refine_power)
    original = unet.attn_processors
    unet.set_attn_processor(
        {name: HeatmapProcessor(collector, name) if selected_layer(name, layers, refine_power > 0, refine_layers) else proc
         for name, proc in original.items()}
    )
    try:
        yield collector
    finally:
        collector.active = False
        collector._scores = collector._head_sum = None  # up to b × heads × 1024² floats
        unet.set_attn_processor(original)
