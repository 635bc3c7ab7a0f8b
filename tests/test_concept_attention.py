"""ConceptAttention (``heatmap_method: "concept_attention"``) on the MMDiT families (tiny SD3, FLUX, FLUX.2
[klein] and [dev]): the concept tokens' stream is the joint blocks' own text stream (replayed through diffusers'
blocks), images stay bit-identical, maps do not depend on the batch, the three tasks label, and other families
refuse it."""

import numpy as np
import pytest
import torch
import family_checks as check
from conftest import small_config

from diffugen.config import parse_config
from diffugen.errors import DiffuGenError
from diffugen.generation.family import family_of
from diffugen.generation.planner import plan
from diffugen.generation.runner import Runner, generate

MMDIT = ["builtin:tiny-sd3", "builtin:tiny-flux", "builtin:tiny-flux2", "builtin:tiny-flux2-dev"]
TWO = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}


def _runner(model: str, root, method: str = "concept_attention", **overrides) -> Runner:
    values = dict(model=model, steps=2, attributes=TWO, seeds=[3], heatmap_method=method, self_attention_power=0)
    return Runner(parse_config(small_config("ca", root, **{**values, **overrides})))


@pytest.mark.parametrize("model", MMDIT)
def test_concept_stream_is_the_blocks_own_text_stream(model, tmp_path):
    """Replaying each joint block from diffusers' own code (its stock processors) with the concept states as
    its text input, beside the image states it saw, gives the concept states our stream carried after it."""
    runner = _runner(model, tmp_path, templates=["a {object} and a bus on a road"], attributes={"object": ["car"]})
    pipe = runner.pipeline("txt2img")
    family, item = family_of(pipe), plan(runner.cfg, "txt2img")[:1]
    calls = []
    with family.capture(pipe, method="concept_attention") as col:
        stream, handles = col.stream, []
        for block in pipe.transformer.transformer_blocks:  # after the stream's own hooks: they see its states
            # (FLUX.2 Base runs its unconditional half as a call of its own, which the capture skips)
            handles.append(block.register_forward_pre_hook(
                lambda m, a, kw: None if not col.active else calls.append([m, kw, stream.hidden]), with_kwargs=True))
            handles.append(block.register_forward_hook(
                lambda m, a, out: None if not col.active else calls[-1].append(stream.hidden)))
        runner.run_batch(pipe, col, "txt2img", item)
        for h in handles:
            h.remove()
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer.transformer_blocks[0]._forward_hooks
    assert len(calls) == 2 * len(pipe.transformer.transformer_blocks)  # 2 steps
    checked = 0
    with torch.no_grad():
        for block, kw, before, after in calls:
            concepts = before.shape[1]
            assert concepts == 2  # "car" and "bus"; they attend to each other
            image = kw["hidden_states"][-1:]
            if "temb_mod_txt" in kw:  # FLUX.2: the modulation is the transformer's, given to every block
                extra = {k: kw[k][-1:] for k in ("temb_mod_img", "temb_mod_txt")}
            else:
                extra = {"temb": kw["temb"][-1:]}
            if "image_rotary_emb" in kw:  # FLUX: concepts sit at position 0 (FLUX.1's text ids all are; FLUX.2's first)
                text = kw["encoder_hidden_states"].shape[1]
                extra["image_rotary_emb"] = tuple(torch.cat([r[:1].expand(concepts, -1), r[text:]])
                                                  for r in kw["image_rotary_emb"])
            replayed, _ = block(hidden_states=image, encoder_hidden_states=before, **extra)  # (text, image)
            if replayed is None:  # SD3's last block: its text stream ends there
                continue
            torch.testing.assert_close(after, replayed, rtol=1e-4, atol=1e-5)
            checked += 1
    assert checked >= len(pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("model", MMDIT)
def test_images_are_bit_identical_and_maps_are_the_concepts_own(model, tmp_path):
    out = {}
    for method in ("cross_attention", "concept_attention"):
        runner = _runner(model, tmp_path / method, method, batch_size=2)
        pipe = runner.pipeline("txt2img")
        with family_of(pipe).capture(pipe, method=method) as col:
            out[method] = runner.run_batch(pipe, col, "txt2img", plan(runner.cfg, "txt2img"))
    (images, maps, found, _), (c_images, c_maps, c_found, c_ranges) = out["cross_attention"], out["concept_attention"]
    assert np.array_equal(images, c_images) and found == c_found
    assert all(m.max() == 255 for row in c_maps for m in row)
    assert any(not np.array_equal(a, b) for ra, rb in zip(maps, c_maps) for a, b in zip(ra, rb))
    # A layer's concept map is a softmax over the image tokens: its mean over the grid is 1 / tokens.
    h, w = family_of(pipe).latent_size(pipe, 64, 96)
    assert all(lo < 1 / (h * w) < hi for row in c_ranges for lo, hi in row)
    assert not pipe.transformer._forward_pre_hooks  # the stream's hooks are gone


@pytest.mark.parametrize("model", MMDIT)
def test_batch_size_does_not_change_concept_maps(model, tmp_path):
    """Each prompt's concepts are its own class words: a batch of prompts with other words gives the same maps."""
    check.assert_batch_size_keeps_images_and_maps(model, tmp_path, heatmap_method="concept_attention")


def test_all_tasks_label_with_concept_attention(tmp_path, dataset_name):
    check.assert_all_tasks_labeled("builtin:tiny-sd3", tmp_path, dataset_name, heatmap_method="concept_attention")


def test_a_unet_family_refuses_concept_attention_before_writing(tmp_path, dataset_name):
    import fiftyone as fo

    cfg = parse_config(small_config(dataset_name, tmp_path / "out", heatmap_method="concept_attention"))
    with pytest.raises(DiffuGenError, match=r"heatmap_method 'concept_attention': model builtin:tiny is a 'sd' "
                                            r"model, which offers \['cross_attention'\]"):
        generate(cfg)
    assert not fo.dataset_exists(dataset_name) and not (tmp_path / "out").exists()
