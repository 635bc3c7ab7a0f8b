"""Overhead of heatmap capture per model family: bare diffusers vs our capture vs daam / attention-map-diffusers.

Usage::

    python bench/bench_capture.py [--model builtin:tiny|builtin:tiny-sdxl|builtin:tiny-sd3|builtin:tiny-flux|builtin:tiny-flux2|builtin:tiny-flux2-dev]
                                  [--n 6] [--reps 3] [--size 512] [--steps 5] [--guidance G]
                                  [--refine-power N] [--refine-layers down|all] [--peers auto|none|daam,amd]
                                  [--model-sized [VARIANT]] [--depth N] [--sd-unet] [--device cpu|cuda|meta] [--dtype D]
                                  [--no-memory] [--softmax-record] [--threads N] [--verbose] [--quick]

The same pipeline, prompts and seeds are generated one image at a time in these modes:

* ``bare``: ``pipe(prompt, ...)``, plain diffusers (the family's own prompt encoding; its default
  negative prompt, which is ``""`` for SD/SDXL/SD3 and none for FLUX);
* ``ours``: what ``Runner.run_batch`` does, through the model-family seam: ``family = family_of(pipe)``,
  ``family.capture(...)`` (``heatmap_method`` cross_attention, the default) around
  ``family.encode(pipe, [prompt], "")``, ``family.word_positions`` / ``family.word_occurrences`` of
  the class words, ``family.task_kwargs``, ``collector.reset`` with their tokens and
  ``family.latent_size``, the pipeline call with ``**encoded.pipeline_kwargs`` (CPU generator), the
  image to uint8, ``collector.word_heatmaps(..., normalize=False)`` and each map min-max to uint8.
  The capture is installed and removed per image (the runner does it once per task: this is the
  conservative side; the time it takes is also reported apart, and the ratio without it);
* ``refined`` (with ``--refine-power N``): ``ours`` with Dataset Diffusion's self-attention refinement
  (``family.capture(..., refine_power=N, refine_layers=...)``; UNet families record it in the down
  blocks, the default, or all layers; SD3/FLUX on their token grid);
* ``softmax`` (with ``--softmax-record``, SD3 and FLUX): ``ours`` with the joint record's full softmax over
  all keys, in place of the attention kernel's logsumexp (how the record worked before it took it);
* ``daam`` (SD 1.x and SDXL): daam 0.2.0's ``with trace(pipe)``, the pipeline call, the global heat map
  and each class word's ``expand_as`` map (for SDXL with ``output_type="pil"``: daam's ``expand_as``
  reads a PIL image's size);
* ``amd`` (attention-map-diffusers 1.0.0, every family): ``AttentionCapture(pipe,
  relations=["image->text"], timesteps="all", heads="mean", key_indices=<the class words' tokens>)``
  around the pipeline call, ``compute()``, then each class word's map as ours is made (the conditional
  row, every recorded layer upsampled to the latent grid and summed, the mean over the word's tokens,
  bicubic to the image, min-max to uint8). The words' positions are the family's, found once per
  prompt before timing (the peer has no word lookup of its own).

``--peers auto`` (default): daam for SD 1.x and SDXL, attention-map-diffusers for SD3 and FLUX; a peer
that is not importable is skipped with a note. Each mode runs once to warm up (and the warm-up
checks that ``ours`` leaves the image as ``bare`` makes it); then per repetition and image the modes
run back to back, in an order rotated per image, so drifts of the machine hit all modes alike.
Reported: the median per-image time of each mode, the ratios of those medians, the median of paired
per-image ratios, on the CPU the ratios of process CPU time, and memory:

* on CUDA: ``torch.cuda.max_memory_allocated`` per mode (reset before each call; the max over the
  images), as a ratio to bare, in total and above what was allocated before the call (the weights);
* on the CPU: after the timings, one more pass of every mode and image under ``torch.profiler`` with
  ``profile_memory`` (not timed): the peak of torch's CPU allocations during the call above what was
  allocated before it (the weights), the running sum of the profiler's allocation and free events; as a
  ratio to bare, above the weights and with the weights' bytes added (``--no-memory`` skips the pass);
* everywhere: the bytes the capture keeps (ours: the collector's maps, self-attention sums and
  scratch buffers at the end of the pipeline call; amd: its ``peak_capture_bytes``).

Targets: ours/bare <= 1.05, refined/bare <= 1.10 (time); peak memory with capture / bare <= 1.10.

``--model-sized`` swaps the tiny pipeline for one of the family's real widths and depths with random
weights from fixed seeds (the tiny tokenizers, so the vocabulary embeddings are small; no download),
meant for ``--device cuda`` (built directly on the device in ``--dtype``: bf16 for SD3/FLUX, fp16 for
SD/SDXL by default). ``--device meta`` builds it without memory, prints its parameter counts and exits
(a check of the config on any machine). What each builds:

* SD 1.x (``--sd-unet`` is the same): SD 1.5: CLIP-L text encoder (768 wide, 12 layers), UNet
  320/640/1280/1280 (~860M), VAE 128/256/512/512;
* SDXL: SDXL base 1.0: CLIP-L (768, 12 layers) and OpenCLIP bigG (1280, 32 layers, projection 1280),
  UNet 320/640/1280 with 1/2/10 transformer layers, 2048-wide context, text_time conditioning (~2.6B),
  VAE 128/256/512/512;
* SD3 (``sd3.5-large``, default): SD3.5 Large: CLIP-L and CLIP-G with projections, T5-XXL encoder
  (4096 wide, 24 layers, 64 heads), MMDiT of 38 joint blocks at 2432 width (38 heads of 64, RMS q/k
  norm; ~8.1B), 16-channel VAE; ``sd3.5-medium``: 24 blocks at 1536, the first 13 with the extra image
  self-attention (~2.2B);
* FLUX (``flux.1-dev``): FLUX.1 dev: CLIP-L, T5-XXL, transformer of 19 double-stream and 38
  single-stream blocks at 3072 width (24 heads of 128; ~12B), guidance embedding, 16-channel VAE;
* FLUX.2 (``flux2-klein-4b``, the default of ``builtin:tiny-flux2``): FLUX.2 [klein] Base 4B: a Qwen3-4B text
  encoder (2560 wide, 36 layers), a transformer of 5 double-stream and 20 single-stream blocks at 3072 width (24
  heads of 128, a 7680-wide context: three of the encoder's hidden states per token), no guidance embedding, FLUX.2's
  32-channel VAE; ``flux2-dev`` (the default of ``builtin:tiny-flux2-dev``): FLUX.2 [dev]: a Mistral Small 3.1 text
  encoder (5120 wide, 40 layers, with its Pixtral vision tower) and diffusers' default transformer, 8 double-stream
  and 48 single-stream blocks at 6144 width (48 heads of 128), guidance embedding.

The SD3 and FLUX ones hold 13-17B parameters (26-34 GB in bf16): not for a CPU with 24 GB of RAM. ``--depth N``
keeps their widths with ``N`` transformer blocks (FLUX: ``N`` of each kind) and ``N`` T5 layers: a call's peak
memory above the weights does not grow with depth in inference (each block's activations are freed before the
next), except for what the capture keeps per layer, which is reported, so such a model measures the memory ratios
at the real widths and sizes on a CPU.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from _common import build_pipeline, machine_line, mark, median, pick_device, sync, timer

from diffugen.generation.builtin import BUILTINS
from diffugen.generation.family import family_of

TARGET = 1.05
TARGET_REFINED = 1.10
TARGET_MEMORY = 1.10

MODELS = {"builtin:tiny": "sd", "builtin:tiny-sdxl": "sdxl", "builtin:tiny-sd3": "sd3", "builtin:tiny-flux": "flux",
          "builtin:tiny-flux2": "flux2", "builtin:tiny-flux2-dev": "flux2"}
MODELS_INV = {f: m for m, f in MODELS.items()}
GUIDANCE = {"sd": 7.5, "sdxl": 7.5, "sd3": 7.5, "flux": 3.5,  # FLUX dev's embedded guidance (no CFG)
            "flux2": 4.0}  # FLUX.2 [klein] Base's CFG (the tiny one is not step-distilled); [dev]'s distilled guidance
SIZED = {"sd": ("sd1.5",), "sdxl": ("sdxl-base",), "sd3": ("sd3.5-large", "sd3.5-medium"), "flux": ("flux.1-dev",),
         "flux2": ("flux2-klein-4b", "flux2-dev")}
AUTO_PEERS = {"sd": ["daam"], "sdxl": ["daam"], "sd3": ["amd"], "flux": ["amd"], "flux2": ["amd"]}

PROMPTS = [
    ("a photo of a red car on a road", ["car"]),
    ("a yellow bus and a white van in a city street", ["bus", "van"]),
    ("a black truck with big tires near a house", ["truck", "tires"]),
    ("a blue car and a green bus on a highway at night", ["car", "bus"]),
    ("a silver taxi parked in front of a building", ["taxi", "building"]),
    ("a person and a dog near a tree in a park", ["person", "dog", "tree"]),
]


# ---- model-sized random-weight pipelines -----------------------------------------------------------
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64)
VAE = dict(layers_per_block=2, block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


@contextmanager
def built_on(device: str, dtype: torch.dtype):
    """Modules constructed inside are created on ``device`` in ``dtype`` (no CPU copy of the weights first)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def _vae16(seed: int, sample_size: int, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, sample_size=sample_size, **VAE,
                         use_quant_conv=False, use_post_quant_conv=False, **extra)


def build_sdxl_sized(device: str, dtype: torch.dtype):
    """SDXL base 1.0's sizes, random weights, built on ``device`` in ``dtype`` (see the module docstring)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from diffugen.generation.builtin import _text_encoder, tiny_tokenizer

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(pad_token="!")
    with built_on(device, dtype):
        text_encoder = _text_encoder(CLIPTextModel, tokenizer, 0, CLIP_L)
        text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, tokenizer_2, 3, CLIP_G)
        torch.manual_seed(1)
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        torch.manual_seed(2)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, **VAE,
                            scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def t5_sizes(depth: int | None) -> dict:
    """T5-XXL's sizes, with ``depth`` layers where given (``--depth``)."""
    return {**T5_XXL, "num_layers": depth} if depth else T5_XXL


def build_sd3_sized(device: str, dtype: torch.dtype, variant: str = "sd3.5-large", depth: int | None = None):
    """SD3.5 Large's (or Medium's) sizes, random weights, built on ``device`` in ``dtype`` (see the module docstring);
    ``depth``: that many joint blocks and T5 layers, the widths kept (``--depth``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from diffugen.generation.builtin import _t5_encoder, _text_encoder, tiny_t5_tokenizer, tiny_tokenizer

    tokenizer, tokenizer_2, tokenizer_3 = tiny_tokenizer(), tiny_tokenizer(pad_token="!"), tiny_t5_tokenizer()
    sizes = (dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192,
                  dual_attention_layers=()) if variant == "sd3.5-large" else
             dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
                  dual_attention_layers=tuple(range(13))))
    if depth:
        sizes.update(num_layers=depth, dual_attention_layers=tuple(i for i in sizes["dual_attention_layers"] if i < depth))
    with built_on(device, dtype):
        text_encoder = _text_encoder(CLIPTextModelWithProjection, tokenizer, 0, CLIP_L)
        text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, tokenizer_2, 3, CLIP_G)
        text_encoder_3 = _t5_encoder(tokenizer_3, 4, t5_sizes(depth))
        torch.manual_seed(1)
        transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                            attention_head_dim=64, joint_attention_dim=4096,
                                            pooled_projection_dim=2048, qk_norm="rms_norm", **sizes)
        vae = _vae16(2, 1024, scaling_factor=1.5305, shift_factor=0.0609)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def build_flux_sized(device: str, dtype: torch.dtype, depth: int | None = None):
    """FLUX.1 dev's sizes, random weights, built on ``device`` in ``dtype`` (see the module docstring); ``depth``:
    that many double-stream, single-stream and T5 layers, the widths kept (``--depth``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from diffugen.generation.builtin import _t5_encoder, _text_encoder, tiny_t5_tokenizer, tiny_tokenizer

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_t5_tokenizer()
    with built_on(device, dtype):
        text_encoder = _text_encoder(CLIPTextModel, tokenizer, 0, CLIP_L)
        text_encoder_2 = _t5_encoder(tokenizer_2, 4, t5_sizes(depth))
        torch.manual_seed(1)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=depth or 19,
                                             num_single_layers=depth or 38,
                                             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                             pooled_projection_dim=768, guidance_embeds=True,
                                             axes_dims_rope=(16, 56, 56))
        vae = _vae16(2, 1024, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128)
MISTRAL_SMALL = dict(hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128)
PIXTRAL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, head_dim=64,
               image_size=1540, patch_size=14)


def build_flux2_sized(device: str, dtype: torch.dtype, variant: str = "flux2-klein-4b"):
    """FLUX.2 [klein] Base 4B's (or FLUX.2 [dev]'s) sizes, random weights, built on ``device`` in ``dtype`` (see the
    module docstring); the tiny tokenizers, so the vocabulary embeddings are small."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel

    from diffugen.generation.builtin import (flux2_scheduler, mistral3_text_encoder, qwen3_text_encoder,
                                             tiny_mistral_processor, tiny_qwen_tokenizer)

    dev = variant == "flux2-dev"
    tokenizer = tiny_mistral_processor() if dev else tiny_qwen_tokenizer()
    with built_on(device, dtype):
        text_encoder = (mistral3_text_encoder(tokenizer, MISTRAL_SMALL, PIXTRAL) if dev
                        else qwen3_text_encoder(tokenizer, QWEN3_4B))
        torch.manual_seed(1)
        # diffusers' defaults are [dev]'s transformer (8 double-stream and 48 single-stream blocks at 6144 width)
        transformer = (Flux2Transformer2DModel() if dev else
                       Flux2Transformer2DModel(num_layers=5, num_single_layers=20, num_attention_heads=24,
                                               joint_attention_dim=3 * QWEN3_4B["hidden_size"], guidance_embeds=False))
        torch.manual_seed(2)
        vae = AutoencoderKLFlux2()  # FLUX.2's VAE: 32 latent channels, 128/256/512/512
    parts = dict(scheduler=flux2_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                 transformer=transformer)
    return Flux2Pipeline(**parts) if dev else Flux2KleinPipeline(**parts, is_distilled=False)


def default_dtype(family: str, device: str) -> str:
    if not str(device).startswith("cuda"):
        return "float32"
    return "bfloat16" if family in ("sd3", "flux", "flux2") else "float16"


def load(model: str, sized: str | None, device: str, dtype: str, depth: int | None = None):
    """The pipeline to time: the tiny builtin, or (``sized``) the family's model-sized random-weight one (SD3 and
    FLUX: ``depth`` layers)."""
    family = MODELS[model]
    torch_dtype = getattr(torch, dtype)
    if sized is None:
        pipe = BUILTINS[model.removeprefix("builtin:")]().to(device)
        if torch_dtype != torch.float32:
            pipe = pipe.to(dtype=torch_dtype)
    elif family == "sd":
        if device == "meta":
            with built_on("meta", torch_dtype):
                return build_pipeline(True, "meta", dtype)
        pipe = build_pipeline(True, device, dtype)  # today's --sd-unet (built on the CPU, then moved)
    else:
        if family == "sdxl":
            pipe = build_sdxl_sized(device, torch_dtype)
        elif family == "sd3":
            pipe = build_sd3_sized(device, torch_dtype, sized, depth)
        elif family == "flux2":
            pipe = build_flux2_sized(device, torch_dtype, sized)
        else:
            pipe = build_flux_sized(device, torch_dtype, depth)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in pipe.components.items()
            if isinstance(m, torch.nn.Module)}


# ---- the modes ---------------------------------------------------------------------------------------
class Bench:
    """The pipeline under test and the per-call settings every mode shares."""

    def __init__(self, pipe, a):
        self.pipe, self.a, self.device = pipe, a, str(pipe.device)
        self.family = family_of(pipe)
        self.size = (a.size, a.size)
        self._words: dict[str, tuple[list[int], list[list[int]]]] = {}

    def call_kwargs(self, seed: int) -> dict:
        a = self.a
        return dict(num_inference_steps=a.steps, guidance_scale=a.guidance, height=a.size, width=a.size,
                    generator=torch.Generator("cpu").manual_seed(seed))

    def words(self, prompt: str, words: list[str]) -> tuple[list[int], list[list[int]]]:
        """For the peers (set up once, not timed): the class words' token positions and each occurrence's."""
        if prompt not in self._words:
            e = self.family.encode(self.pipe, [prompt], "").prompts[0]
            tokens = sorted({t for w in words for t in self.family.word_positions(self.pipe, e, w)})
            occurrences = [run for w in words for run in self.family.word_occurrences(self.pipe, e, w)]
            self._words[prompt] = tokens, occurrences
        return self._words[prompt]


@contextmanager
def timed_context(ctx, info: dict, device: str):
    """``with ctx``, adding the seconds its enter and exit take (installing and removing the capture
    processors) to ``info["install"]``: the runner does that once per task, the bench once per image."""
    sync(device)
    t0 = time.perf_counter()
    value = ctx.__enter__()
    sync(device)
    info["install"] += time.perf_counter() - t0
    try:
        yield value
    except BaseException as exc:
        if not ctx.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        sync(device)
        t0 = time.perf_counter()
        ctx.__exit__(None, None, None)
        sync(device)
        info["install"] += time.perf_counter() - t0


def cpu_peak_above(fn) -> int:
    """The peak of torch's CPU allocations while ``fn()`` ran, above what was allocated before (the running sum of
    ``torch.profiler``'s memory events: each allocation's bytes, each free's negative)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def kept_bytes(collector) -> int:
    """Bytes the collector holds: its per-layer maps, self-attention sums and scratch buffers."""
    tensors = [*collector.maps.values(), *collector.self_attention.values(), collector._scores, collector._head_sum]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def to_uint8(m: torch.Tensor) -> np.ndarray:
    lo, hi = m.min(), m.max()
    norm = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    return (norm.numpy() * 255).round().astype(np.uint8)


def run_bare(b: Bench, prompt, words, seed):
    return b.pipe(prompt=prompt, output_type="np", **b.call_kwargs(seed)).images, {}


def run_ours(b: Bench, prompt, words, seed, refine_power=0):
    """``Runner.run_batch`` for one prompt, through the family seam (see the module docstring)."""
    pipe, a = b.pipe, b.a
    family = family_of(pipe)
    info = {"install": 0.0}
    with timed_context(family.capture(pipe, "daam", refine_power, a.refine_layers), info, b.device) as collector:
        encoded = family.encode(pipe, [prompt], "")
        e = encoded.prompts[0]
        positions = [family.word_positions(pipe, e, w) for w in words]
        occurrences = [run for w in words for run in family.word_occurrences(pipe, e, w)]
        size = family.task_kwargs(pipe, "txt2img", {"height": b.size[0], "width": b.size[1]}, b.size)
        collector.reset(1, sorted({t for p in positions for t in p}), family.latent_size(pipe, *b.size))
        kwargs = {**b.call_kwargs(seed), **size}
        kwargs["generator"] = [kwargs["generator"]]
        out = pipe(**encoded.pipeline_kwargs, output_type="np", **kwargs)
        _ = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
        info["kept"] = kept_bytes(collector)
        if collector.active:
            raw = collector.word_heatmaps([occurrences], b.size, normalize=False)
            _ = [[to_uint8(m) for m in row] for row in raw]
    return out.images, info


def run_softmax(b: Bench, prompt, words, seed):
    """``ours`` with the joint record's full softmax (no logsumexp from the attention kernel): the record before
    it took the kernel's (``--softmax-record``, SD3 and FLUX)."""
    from diffugen.generation import joint_attention

    real = joint_attention.attention_with_lse
    joint_attention.attention_with_lse = lambda *args: (real(*args)[0], None)
    try:
        return run_ours(b, prompt, words, seed)
    finally:
        joint_attention.attention_with_lse = real


def run_refined(b: Bench, prompt, words, seed):
    return run_ours(b, prompt, words, seed, refine_power=b.a.refine_power)


def run_daam(b: Bench, prompt, words, seed):
    from daam import trace

    # daam's expand_as reads a PIL image's size; for SD 1.x it records the image whatever the output type.
    output_type = "pil" if b.family.name == "sdxl" else "np"
    with trace(b.pipe) as tc:
        images = b.pipe(prompt=prompt, output_type=output_type, **b.call_kwargs(seed)).images
        global_map = tc.compute_global_heat_map()
        _ = [global_map.compute_word_heat_map(w).expand_as(tc.last_image) for w in words]
    return images, {}


def run_amd(b: Bench, prompt, words, seed):
    from attention_map_diffusers import AttentionCapture

    tokens, occurrences = b.words(prompt, words)
    column = {t: i for i, t in enumerate(tokens)}
    grid = b.family.latent_size(b.pipe, *b.size)
    with AttentionCapture(b.pipe, relations=["image->text"], timesteps="all", heads="mean",
                          key_indices=tokens) as cap:
        images = b.pipe(prompt=prompt, output_type="np", **b.call_kwargs(seed)).images
        maps = cap.compute()
    total = None
    for r in maps.records:
        if r.relation != "image->text":
            continue
        m = r.data[-1, 0].float().T.reshape(1, len(tokens), r.q_shape.height, r.q_shape.width)  # conditional row
        if tuple(m.shape[-2:]) != grid:
            m = F.interpolate(m, size=grid, mode="bicubic").clamp_(min=0)
        total = m if total is None else total + m
    for run in occurrences:
        m = total[0, [column[t] for t in run]].mean(0)
        to_uint8(F.interpolate(m[None, None], size=b.size, mode="bicubic")[0, 0])
    return images, {"kept": int(maps.metadata.get("peak_capture_bytes", 0))}


PEERS = {"daam": ("daam", run_daam), "amd": ("attention_map_diffusers", run_amd)}


def choose_peers(spec: str, family: str, size: int) -> list[str]:
    names = AUTO_PEERS[family] if spec == "auto" else [] if spec == "none" else [p.strip() for p in spec.split(",")]
    chosen = []
    for name in names:
        if name not in PEERS:
            raise SystemExit(f"--peers: unknown peer {name!r} (daam, amd)")
        if name == "daam" and family not in ("sd", "sdxl"):
            print(f"note: daam 0.2.0 traces only StableDiffusionPipeline and StableDiffusionXLPipeline: skipped for {family}")
            continue
        try:
            __import__(PEERS[name][0])
        except ImportError:
            print(f"{PEERS[name][0]} not importable: {name} column skipped")
            continue
        if name == "daam" and size not in (512, 768):
            print(f"note: daam sizes its maps for 512/768 px images; at --size {size} it still runs, "
                  "with a different layer-factor bookkeeping")
        chosen.append(name)
    return chosen


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny", choices=list(MODELS))
    ap.add_argument("--n", type=int, default=6, help="images per repetition (prompt i %% 6, seed i)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None, help="guidance_scale (default: 7.5; FLUX 3.5)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu; meta: --model-sized's "
                                                   "parameter counts only")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="default: float32 on the CPU; on CUDA float16 (SD, SDXL) or bfloat16 (SD3, FLUX)")
    ap.add_argument("--model-sized", nargs="?", const="", default=None, metavar="VARIANT",
                    help="the family's real sizes with random weights (for GPUs): "
                         + "; ".join(f"{MODELS_INV[f]}: {', '.join(v)}" for f, v in SIZED.items()))
    ap.add_argument("--depth", type=int, default=None,
                    help="with --model-sized, SD3 and FLUX: that many transformer blocks (FLUX: of each kind) and T5 "
                         "layers, the widths kept: a call's activation memory on a machine that cannot hold the "
                         "weights (above the weights it does not grow with depth, but for what the capture keeps per "
                         "layer, which is reported)")
    ap.add_argument("--sd-unet", action="store_true", help="SD-1.5-sized random-weight pipeline (= --model-sized "
                                                           "with builtin:tiny)")
    ap.add_argument("--peers", default="auto", help="auto (daam for SD/SDXL, amd for SD3/FLUX), none, or a list: daam,amd")
    ap.add_argument("--no-daam", action="store_true", help="skip daam even if installed")
    ap.add_argument("--refine-power", type=int, default=0, help="also time the self-attention refinement with this power")
    ap.add_argument("--refine-layers", default="down", choices=["down", "all"],
                    help="self-attention layers the refinement records in a UNet (the config's self_attention_layers)")
    ap.add_argument("--softmax-record", action="store_true",
                    help="also time ours with the joint record's full softmax in place of the kernel's logsumexp (SD3, FLUX)")
    ap.add_argument("--no-memory", action="store_true", help="on the CPU, skip the (untimed) peak-memory pass")
    ap.add_argument("--verbose", action="store_true", help="print every timing")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (1 image, 1 repetition, 64², 2 steps, refined "
                                                        "mode on): checks that every mode runs, times nothing useful")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.reps, a.size, a.steps, a.refine_power = 1, 1, 64, 2, a.refine_power or 1
    if a.threads:
        torch.set_num_threads(a.threads)

    family = MODELS[a.model]
    sized = a.model_sized if a.model_sized is not None else ("" if a.sd_unet else None)
    if a.sd_unet and family != "sd":
        raise SystemExit("--sd-unet is the SD 1.x model-sized pipeline: use --model-sized for the other families")
    if sized == "":
        sized = "flux2-dev" if a.model == "builtin:tiny-flux2-dev" else SIZED[family][0]
    if sized is not None and sized not in SIZED[family]:
        raise SystemExit(f"--model-sized {sized}: {a.model} offers {', '.join(SIZED[family])}")
    if a.depth is not None and (sized is None or family not in ("sd3", "flux") or a.depth < 1):
        raise SystemExit("--depth: a positive number of layers, with --model-sized, for SD3 or FLUX")
    device = pick_device(a.device)
    dtype = a.dtype or default_dtype(family, "cuda" if device == "meta" else device)
    if a.guidance is None:
        a.guidance = GUIDANCE[family]
    label = (f"{sized}-sized (random weights{f', {a.depth} layers deep' if a.depth else ''})" if sized
             else a.model)

    if device == "meta":
        if sized is None:
            raise SystemExit("--device meta only counts a --model-sized pipeline's parameters")
        counts = parameter_counts(load(a.model, sized, "meta", dtype, a.depth))
        print(f"{label}: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in counts.items())
              + f"; total {sum(counts.values()) / 1e9:.2f}B parameters ({dtype}: "
              f"{sum(counts.values()) * getattr(torch, dtype).itemsize / 2**30:.1f} GiB)")
        return

    modes = {"bare": run_bare, "ours": run_ours}
    if a.softmax_record:
        modes["softmax"] = run_softmax
    if a.refine_power:
        modes["refined"] = run_refined
    for name in choose_peers(a.peers, family, a.size):
        if not (name == "daam" and a.no_daam):
            modes[name] = PEERS[name][1]

    pipe = load(a.model, sized, device, dtype, a.depth)
    b = Bench(pipe, a)
    cuda = str(device).startswith("cuda")
    counts = parameter_counts(pipe)
    print(machine_line(device))
    print(f"model={label} family={b.family.name} ({type(pipe).__name__}, {sum(counts.values()) / 1e6:.1f}M parameters, "
          f"{dtype}) size={a.size} steps={a.steps} guidance={a.guidance} n={a.n} reps={a.reps} modes={list(modes)}")

    with torch.no_grad():
        first = {}
        for name, fn in modes.items():  # warm-up
            first[name] = np.asarray(fn(b, *PROMPTS[0], 0)[0], dtype=np.float64)
        diff = float(np.abs(first["ours"] - first["bare"]).max())
        print(f"warm-up: image max |ours - bare| = {diff:.3g}" + (
            f", |refined - bare| = {float(np.abs(first['refined'] - first['bare']).max()):.3g}" if "refined" in first else ""))

        times: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        peak: dict[str, list[int]] = {m: [] for m in modes}
        above: dict[str, list[int]] = {m: [] for m in modes}
        kept: dict[str, list[int]] = {m: [] for m in modes}
        install: dict[str, list[float]] = {m: [] for m in modes}
        names = list(modes)
        for rep in range(a.reps):
            for i in range(a.n):
                prompt, words = PROMPTS[i % len(PROMPTS)]
                b.words(prompt, words)  # the peers' set-up, outside the timings
                k = (i + rep) % len(names)
                for name in names[k:] + names[:k]:
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        before = torch.cuda.memory_allocated()
                    with timer(times[name], device, cpu[name]):
                        _, info = modes[name](b, prompt, words, i)
                    if cuda:
                        peak[name].append(torch.cuda.max_memory_allocated())
                        above[name].append(peak[name][-1] - before)
                    if "kept" in info:
                        kept[name].append(info["kept"])
                    if "install" in info:
                        install[name].append(info["install"])
                    if a.verbose:
                        print(f"  rep {rep} image {i} {name}: {times[name][-1]:.3f} s wall, {cpu[name][-1]:.3f} s CPU")
        if not cuda and not a.no_memory:  # after the timings: the profiler slows what it watches
            for i in range(a.n):
                prompt, words = PROMPTS[i % len(PROMPTS)]
                for name in names:
                    above[name].append(cpu_peak_above(lambda: modes[name](b, prompt, words, i)))

    med = {m: median(t) for m, t in times.items()}
    for m, t in times.items():
        print(f"{m:7s}: median {med[m]:.3f} s/image (min {min(t):.3f}, max {max(t):.3f}, {len(t)} images)")
    others = [m for m in modes if m != "bare"]
    print("  ".join(f"{m}/bare = {med[m] / med['bare']:.2f}" for m in others) + "   (ratio of median per-image times)")
    installed = [m for m in others if install[m]]
    if installed:
        print("  ".join(f"{m}/bare = {median([t - i for t, i in zip(times[m], install[m])]) / med['bare']:.2f}"
                        for m in installed)
              + "   (without installing and removing the processors per image (median "
              + ", ".join(f"{m} {median(install[m]) * 1e3:.1f} ms" for m in installed)
              + "): the runner does that once per task)")
    paired = {m: median([x / y for x, y in zip(times[m], times["bare"])]) for m in others}
    print("paired:   " + "  ".join(f"{m}/bare = {r:.2f}" for m, r in paired.items()) + "   (median of per-image ratios)")
    if device == "cpu":
        cmed = {m: median(t) for m, t in cpu.items()}
        print("CPU time: " + "  ".join(f"{m}/bare = {cmed[m] / cmed['bare']:.2f}" for m in others)
              + "   (ratio of median per-image process CPU times; robust to other load on the machine)")
    if cuda:
        print("peak memory (max_memory_allocated): " + "  ".join(
            f"{m} {mib(max(peak[m]))} ({max(peak[m]) / max(peak['bare']):.3f}× bare; above the weights "
            f"{mib(max(above[m]))}, {max(above[m]) / max(1, max(above['bare'])):.2f}×)" for m in modes))
    elif above["bare"]:
        weights = sum(t.numel() * t.element_size() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                      for t in [*m.parameters(), *m.buffers()])
        for m in modes:
            peak[m] = [weights + x for x in above[m]]
        print(f"peak memory (torch's CPU allocator, profiler; weights {mib(weights)}): " + "  ".join(
            f"{m} above the weights {mib(max(above[m]))} ({max(above[m]) / max(1, max(above['bare'])):.2f}× bare), "
            f"with them {max(peak[m]) / max(peak['bare']):.3f}×" for m in modes))
    if any(kept.values()):
        print("kept by the capture (max over images): " + "  ".join(f"{m} {mib(max(v))}" for m, v in kept.items() if v))
    r = med["ours"] / med["bare"]
    print(f"target ours/bare <= {TARGET:.2f}: {mark(r, TARGET)}")
    if "refined" in med:
        rr = med["refined"] / med["bare"]
        print(f"target refined/bare <= {TARGET_REFINED:.2f}: {mark(rr, TARGET_REFINED)}")
    if peak["bare"]:
        for m in [x for x in ("ours", "refined") if x in modes]:
            rm = max(peak[m]) / max(peak["bare"])
            print(f"target peak memory {m}/bare <= {TARGET_MEMORY:.2f}: {mark(rm, TARGET_MEMORY)}")

if __name__ == "__main__":
    main()
