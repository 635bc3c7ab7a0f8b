"""The cross-attention processor: known regions, any size, word → tokens, embeddings, restoration."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from diffugen.errors import ModelNotFoundError
from diffugen.generation.attention import HeatmapCollector, capture_heatmaps
from diffugen.generation.builtin import build_tiny_pipeline
from diffugen.generation.embeddings import load_textual_inversions, read_embedding
from diffugen.generation.sd import embed, tokenize, word_positions
from diffugen.generation.tokens import find_word_tokens
from diffugen.labels.daam import extract_labels


def _run(pipe, collector, prompt, words, height, width, seed=0, steps=3):
    enc = tokenize(pipe, prompt)
    positions = [word_positions(pipe, enc, w) for w in words]
    collector.reset(1, sorted({t for p in positions for t in p}), (height // 8, width // 8))
    out = pipe(prompt_embeds=embed(pipe, [enc]), negative_prompt_embeds=embed(pipe, [tokenize(pipe, "")]),
               num_inference_steps=steps, height=height, width=width, output_type="np",
               generator=[torch.Generator().manual_seed(seed)])
    return out.images[0], [m.numpy() for m in collector.word_heatmaps([positions], (height, width))[0]]


class _ForcedKey(nn.Module):
    """Keys: direction ``u`` for the target word's tokens, ``v`` for the other word's, 0 for the rest."""

    def __init__(self, inner, heads, target, other, scale=6.0):
        super().__init__()
        head_dim = inner // heads
        self.u = torch.zeros(inner)
        self.v = torch.zeros(inner)
        self.u[::head_dim] = scale  # first dim of every head
        self.v[1::head_dim] = scale  # second dim of every head
        self.target, self.other = target, other

    def forward(self, enc):
        out = torch.zeros(*enc.shape[:2], self.u.numel(), dtype=enc.dtype)
        out[:, self.target] = self.u
        out[:, self.other] = self.v
        return out


class _ForcedQuery(nn.Module):
    """Queries: ``u`` on the left half of the layer's grid, ``v`` on the right half."""

    def __init__(self, key: _ForcedKey, latent_hw):
        super().__init__()
        self.key, self.latent_hw = key, latent_hw

    def forward(self, x):
        lh, lw = self.latent_hw
        f = int(round((lh * lw / x.shape[1]) ** 0.5))
        h, w = lh // f, lw // f
        left = (torch.arange(w) < w // 2).repeat(h)  # row-major grid, True on the left half
        q = torch.where(left[:, None], self.key.u, self.key.v)
        return q.expand(x.shape[0], -1, -1).to(x.dtype)


def test_forced_attention_region_is_recovered_at_non_square_size():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    height, width = 64, 128
    prompt = "a red car and a yellow bus"
    enc = tokenize(pipe, prompt)
    car, bus = word_positions(pipe, enc, "car"), word_positions(pipe, enc, "bus")
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2"):
            key = _ForcedKey(module.to_k.out_features, module.heads, car, bus)
            module.to_k = key
            module.to_q = _ForcedQuery(key, (height // 8, width // 8))
    with capture_heatmaps(pipe.unet) as collector:
        _, (car_map, bus_map) = _run(pipe, collector, prompt, ["car", "bus"], height, width)
    assert car_map.shape == (height, width)
    left = np.zeros((height, width), bool)
    left[:, : width // 2] = True
    assert car_map[left].mean() > 0.8 and car_map[~left].mean() < 0.2
    assert bus_map[~left].mean() > 0.8 and bus_map[left].mean() < 0.2
    labels = extract_labels(car_map)
    iou = (labels.mask & left).sum() / (labels.mask | left).sum()
    assert iou >= 0.9 and len(labels.instances) == 1


def test_any_size_and_grid_geometry(tiny_pipe):
    col = HeatmapCollector()
    col.reset(1, [1], (9, 17))  # 72 × 136 px: odd latent sides
    assert col.grid(9 * 17) == (1, 9, 17)
    assert col.grid(5 * 9) == (2, 5, 9)
    with pytest.raises(ValueError, match="does not match"):
        col.grid(7)
    with capture_heatmaps(tiny_pipe.unet) as collector:
        image, maps = _run(tiny_pipe, collector, "a car on a road", ["car"], 72, 136)
    assert image.shape == (72, 136, 3) and maps[0].shape == (72, 136)
    assert maps[0].min() == 0 and abs(maps[0].max() - 1) < 1e-5


def test_capture_does_not_change_images_and_restores_processors(tiny_pipe):
    before = tiny_pipe.unet.attn_processors
    kwargs = dict(num_inference_steps=3, height=64, width=64, output_type="np")
    bare = tiny_pipe("a red car", generator=torch.Generator().manual_seed(3), **kwargs).images
    with capture_heatmaps(tiny_pipe.unet) as collector:
        collector.reset(1, [3], (8, 8))
        captured = tiny_pipe("a red car", generator=torch.Generator().manual_seed(3), **kwargs).images
        assert collector.maps, "cross-attention was recorded"
        inside = tiny_pipe.unet.attn_processors
        assert all(type(inside[k]).__name__ == "HeatmapProcessor" for k in inside if k.endswith("attn2.processor") and not k.startswith("mid"))
    after = tiny_pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert np.array_equal(bare, captured)
    assert np.array_equal(bare, tiny_pipe("a red car", generator=torch.Generator().manual_seed(3), **kwargs).images)


def test_word_to_token_mapping(tiny_pipe):
    enc = tokenize(tiny_pipe, "a car with scooter++ next to a car")
    ids = enc.ids
    car_id = tiny_pipe.tokenizer.convert_tokens_to_ids("car</w>")
    cars = word_positions(tiny_pipe, enc, "car")
    assert cars[0] == 2 and len(cars) == 2 and all(ids[t] == car_id for t in cars)  # both occurrences
    scooter = word_positions(tiny_pipe, enc, "scooter")
    assert len(scooter) == len(tiny_pipe.tokenizer.tokenize("scooter")) > 1  # a multi-token word
    assert all(enc.weights[t] == pytest.approx(1.21) for t in scooter)
    assert word_positions(tiny_pipe, enc, "bus") == []
    assert find_word_tokens([5, 1, 2, 5, 1, 2], [1, 2]) == [1, 2, 4, 5]
    # without emphasis the ids are exactly the pipeline tokenizer's
    plain = tokenize(tiny_pipe, "a car with tires")
    ref = tiny_pipe.tokenizer("a car with tires", padding="max_length", max_length=77, truncation=True).input_ids
    assert plain.ids == ref and plain.weights == [1.0] * 77
    long = tokenize(tiny_pipe, " ".join(["car"] * 100))
    assert long.truncated and len(long.ids) == 77


def test_textual_inversion_token_is_one_word(tmp_path):
    from safetensors.torch import save_file

    pipe = build_tiny_pipeline()
    path = tmp_path / "piano.safetensors"
    save_file({"<grand-piano>": torch.randn(32)}, str(path))
    a1111 = tmp_path / "multi.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "multi"}, a1111)

    class TI:
        def __init__(self, path, token):
            self.path, self.token = path, token

    load_textual_inversions(pipe, [TI(path, "<grand-piano>"), TI(a1111, "<multi>")])
    enc = tokenize(pipe, "a <grand-piano> on a road near a <multi>")
    assert len(word_positions(pipe, enc, "<grand-piano>")) == 1
    assert len(word_positions(pipe, enc, "<multi>")) == 2  # two vectors → two tokens
    new_row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<grand-piano>")]
    assert torch.allclose(new_row, read_embedding(path, "<grand-piano>")[0])


def test_embedding_files_are_read_safely(tmp_path):
    real = read_embedding("examples/embeddings/car-accident.pt", "<car-accident>")
    assert real.shape == (1, 768)
    pipe = build_tiny_pipeline()

    class TI:
        path, token = "examples/embeddings/car-accident.pt", "<car-accident>"

    with pytest.raises(ModelNotFoundError, match="768-d vectors but this model's text encoder uses 32-d"):
        load_textual_inversions(pipe, [TI()])

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"<x>": Evil()}))
    with pytest.raises(ModelNotFoundError, match="could not read the embedding"):
        read_embedding(evil, "<x>")
    assert not marker.exists()


# ---- Dataset Diffusion refinement (self-attention) -----------------------------------------------
def test_refinement_uses_the_finest_self_attention_grid_of_at_most_1024_positions():
    col = HeatmapCollector(refine_power=1)
    col.reset(1, [1], (64, 64))  # SD at 512 px: self-attention at 64², 32², 16², 8² positions
    for side in (64, 32, 16, 8):
        q = torch.randn(1, 2, side * side, 4)
        col.record_self(q, q, 0.5)
    assert sorted(col.self_attention) == [1024]  # 64×64 = 4096 positions is too large; coarser ones unused
    assert col.refine_grid() == (32, 32)
    assert col.refine(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    bare = HeatmapCollector(refine_power=1)
    bare.reset(1, [1], (64, 64))
    maps = torch.rand(1, 1, 64, 64)
    assert bare.refine_grid() is None and bare.refine(maps) is maps  # no self-attention: maps unchanged


def test_a_transformers_token_grid_over_32x32_refines_on_block_means_of_its_queries_and_keys():
    """A joint collector pools a 48×45 token grid (2,160 positions) by 2: the self-attention between the 2×2 block
    means of the queries and of the keys, on 24×23 blocks (an edge block the mean of what it holds); a UNet
    collector skips the same layer, as it has coarser ones to record."""
    from diffugen.generation.joint_attention import JointHeatmapCollector

    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 48 * 45, 4), torch.randn(2, 3, 48 * 45, 4)
    joint = JointHeatmapCollector(refine_power=1)
    joint.reset(1, [1], (48, 45))
    joint.record_self(q, k, 0.5)
    assert joint.refine_grid() == (24, 23)

    def block_means(x):  # (heads, N, d) → (heads, 24 * 23, d)
        g = x.reshape(3, 48, 45, 4)
        return torch.stack([g[:, i : i + 2, j : j + 2].mean((1, 2)) for i in range(0, 48, 2) for j in range(0, 45, 2)], 1)

    expected = torch.softmax(block_means(q[1]) * 0.5 @ block_means(k[1]).transpose(-1, -2), -1).mean(0)
    torch.testing.assert_close(joint.self_attention[24 * 23][0], expected)
    assert joint.refine(torch.rand(1, 2, 48, 45)).shape == (1, 2, 48, 45)
    unet = HeatmapCollector(refine_power=1)
    unet.reset(1, [1], (48, 45))
    unet.record_self(q, k, 0.5)
    assert unet.refine_grid() is None


def test_refinement_spreads_a_map_over_its_object_and_not_beyond():
    """Two objects (left and right halves) whose positions attend within their own object:
    a map peaked on two left positions becomes uniform over the left half and stays 0 on the right."""
    h = w = 8
    col = HeatmapCollector(refine_power=2)
    col.reset(1, [1], (h, w))
    left = (torch.arange(h * w) % w) < w // 2
    same = (left[:, None] == left[None, :]).float()
    col.self_attention = {h * w: (same / same.sum(1, keepdim=True))[None]}  # (1, N, N), rows sum to 1
    col.self_counts, col.self_grids = {h * w: 1}, {h * w: (h, w)}
    tokens = torch.zeros(1, 1, h, w)
    tokens[0, 0, 2, 1] = tokens[0, 0, 5, 2] = 1.0
    refined = col.refine(tokens)[0, 0].flatten()
    assert refined.shape == (h * w,)
    assert torch.allclose(refined[left], torch.full((int(left.sum()),), 2.0 / left.sum()))
    assert torch.all(refined[~left] == 0)


def test_refined_capture_keeps_images_and_records_self_attention(tiny_pipe):
    kwargs = dict(num_inference_steps=3, height=64, width=64, output_type="np")
    bare = tiny_pipe("a red car", generator=torch.Generator().manual_seed(3), **kwargs).images
    before = tiny_pipe.unet.attn_processors
    with capture_heatmaps(tiny_pipe.unet, refine_power=2) as collector:
        # By default only the down blocks' self-attention records (refine_layers="down").
        replaced = {k for k, p in tiny_pipe.unet.attn_processors.items()
                    if k.endswith("attn1.processor") and type(p).__name__ == "HeatmapProcessor"}
        assert replaced and all(k.startswith("down_blocks.") for k in replaced)
        image, maps = _run(tiny_pipe, collector, "a red car", ["car"], 64, 64, seed=3)
        assert collector.refine_grid() == (8, 8)  # 8×8 latent positions, the finest grid
        assert collector.self_counts[64] == 3  # one down-block layer at 8×8, 3 steps
        a = collector.self_attention[64] / collector.self_counts[64]
        assert a.shape == (1, 64, 64)
        assert torch.allclose(a.sum(-1), torch.ones(1, 64), atol=1e-4)
        plain = collector.refine_power
        collector.refine_power = 0
        unrefined = collector.token_heatmaps()
        collector.refine_power = plain
        assert not torch.allclose(unrefined, collector.token_heatmaps())
    assert all(tiny_pipe.unet.attn_processors[k] is before[k] for k in before)
    assert np.array_equal(bare, image[None])
    assert maps[0].shape == (64, 64) and maps[0].min() == 0 and abs(maps[0].max() - 1) < 1e-5


def test_refinement_over_all_layers_records_the_up_blocks_too_and_keeps_images(tiny_pipe):
    kwargs = dict(num_inference_steps=3, height=64, width=64, output_type="np")
    bare = tiny_pipe("a red car", generator=torch.Generator().manual_seed(3), **kwargs).images
    with capture_heatmaps(tiny_pipe.unet, refine_power=1, refine_layers="all") as collector:
        assert all(type(p).__name__ == "HeatmapProcessor" for k, p in tiny_pipe.unet.attn_processors.items()
                   if k.endswith("attn1.processor"))
        image, _ = _run(tiny_pipe, collector, "a red car", ["car"], 64, 64, seed=3)
        assert collector.self_counts[64] == 9  # + the two up-block layers at 8×8, 3 steps
    assert np.array_equal(bare, image[None])


@pytest.mark.parametrize("build", ["build_tiny_sd3_pipeline", "build_tiny_flux_pipeline", "build_tiny_flux2_pipeline"])
def test_joint_record_from_the_kernels_logsumexp_is_the_full_softmaxs(build, monkeypatch):
    """The joint processors take each row's logsumexp from the CPU attention kernel and compute only the class
    words' columns; the maps equal those of the full joint softmax, and the kernel path is the one taken."""
    from diffugen.generation import builtin, joint_attention
    from diffugen.generation.family import family_of

    pipe = getattr(builtin, build)()
    family = family_of(pipe)
    encoded = family.encode(pipe, ["a red car on a road"], "")
    positions = family.word_positions(pipe, encoded.prompts[0], "car")
    real, used = joint_attention.attention_with_lse, []

    def counted(*args):
        out, lse = real(*args)
        used.append(lse is not None)
        return out, lse

    def maps(attention):
        monkeypatch.setattr(joint_attention, "attention_with_lse", attention)
        with torch.no_grad(), family.capture(pipe) as collector:
            collector.reset(1, positions, family.latent_size(pipe, 64, 64))
            pipe(**encoded.pipeline_kwargs, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                 height=64, width=64, output_type="np")
            return {k: v.clone() for k, v in collector.maps.items()}

    fast = maps(counted)
    full = maps(lambda *args: (real(*args)[0], None))
    assert used and all(used) and fast.keys() == full.keys()
    for k in fast:
        torch.testing.assert_close(fast[k], full[k], rtol=1e-4, atol=1e-7)
