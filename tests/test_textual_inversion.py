"""Textual inversion on builtin:tiny: only the new row trains, resume is exact, refusals, generate, CLI."""

import json
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from diffugen.cli import main as cli
from diffugen.config import parse_config
from diffugen.errors import DiffuGenError
from diffugen.generation.builtin import build_tiny_pipeline
from diffugen.generation.embeddings import read_embedding
from diffugen.generation.runner import generate
from diffugen.textual_inversion import checkpoint_path, train_textual_inversion

FAST = dict(steps=4, batch_size=2, size=64, progress=False)


@pytest.fixture
def images(tmp_path) -> Path:
    """Four 64×80 images (non-square: the crop is exercised) of a filled square on random noise."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        arr[16:48, 24:56] = (200, 30 * i, 40)
        Image.fromarray(arr).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_only_the_new_row_trains(images, tmp_path):
    out = tmp_path / "thing.safetensors"
    result = train_textual_inversion(images, "<thing>", "object", "builtin:tiny", out, **FAST)
    assert result.path == out.resolve() and result.steps == 4 and len(result.losses) == 4
    assert all(np.isfinite(result.losses)) and result.final_loss == result.losses[-1]

    fresh, pipe = build_tiny_pipeline(), result.pipeline
    before = fresh.text_encoder.get_input_embeddings().weight
    after = pipe.text_encoder.get_input_embeddings().weight
    new_id = pipe.tokenizer.convert_tokens_to_ids("<thing>")
    init_id = fresh.tokenizer("object", add_special_tokens=False).input_ids[0]
    assert after.shape[0] == before.shape[0] + 1 and new_id == before.shape[0]
    assert torch.equal(after[: before.shape[0]], before)  # every other row bit-identical
    assert not torch.allclose(after[new_id], before[init_id])  # the new row moved off its start
    for name in ("unet", "vae"):
        ref, got = getattr(fresh, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert not after.requires_grad

    emb = read_embedding(out, "<thing>")
    assert emb.shape == (1, 32) and torch.equal(emb[0], after[new_id].detach())
    assert not list(out.parent.glob("*.tmp"))  # atomic writes leave nothing behind


def test_resume_matches_an_uninterrupted_run(images, tmp_path):
    straight = train_textual_inversion(images, "<thing>", "object", "builtin:tiny", tmp_path / "a.safetensors",
                                       checkpoint_every=0, **FAST)
    assert not checkpoint_path(tmp_path / "a.safetensors").exists()

    out = tmp_path / "b.safetensors"
    first = train_textual_inversion(images, "<thing>", "object", "builtin:tiny", out, checkpoint_every=2,
                                    **{**FAST, "steps": 2})
    assert checkpoint_path(out).is_file() and first.losses == straight.losses[:2]
    with pytest.raises(DiffuGenError, match="pass --resume to continue it, or delete it"):
        train_textual_inversion(images, "<thing>", "object", "builtin:tiny", out, checkpoint_every=2, **FAST)
    with pytest.raises(DiffuGenError, match="made with token '<thing>', this run has '<other>'"):
        train_textual_inversion(images, "<other>", "object", "builtin:tiny", out, resume=True, **FAST)

    resumed = train_textual_inversion(images, "<thing>", "object", "builtin:tiny", out, checkpoint_every=2,
                                      resume=True, **FAST)
    assert resumed.losses == straight.losses
    assert torch.equal(read_embedding(out, "<thing>"), read_embedding(straight.path, "<thing>"))


def test_captions_and_two_vectors(images, tmp_path):
    rows = [{"file_name": f"{i}.{'png' if i % 2 else 'jpg'}", "text": f"a red {{}} on the grass {i}"} for i in range(3)]
    (images / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "two.safetensors"
    result = train_textual_inversion(images, "<two>", "red", "builtin:tiny", out, num_vectors=2,
                                     **{**FAST, "steps": 2})
    assert read_embedding(out, "<two>").shape == (2, 32)
    assert result.pipeline.tokenizer.tokenize("<two> <two>_1") == ["<two>", "<two>_1"]

    (images / "metadata.jsonl").write_text(json.dumps({"file_name": "0.jpg", "text": "grass only"}) + "\n")
    with pytest.raises(DiffuGenError, match="does not mention the concept"):
        train_textual_inversion(images, "<two>", "red", "builtin:tiny", tmp_path / "x.safetensors", **FAST)


def test_max_norm_caps_the_new_rows(images, tmp_path, caplog):
    vocab = build_tiny_pipeline().text_encoder.get_input_embeddings().weight
    longest = float(vocab.norm(dim=1).max())
    fast = {**FAST, "lr": 0.5, "checkpoint_every": 0}  # a large step: unconstrained rows outgrow every word
    free = train_textual_inversion(images, "<a>", "object", "builtin:tiny", tmp_path / "a.safetensors", **fast)
    assert float(read_embedding(free.path, "<a>").norm()) > 1.5 * longest

    capped = train_textual_inversion(images, "<b>", "object", "builtin:tiny", tmp_path / "b.safetensors",
                                     max_norm="vocab", num_vectors=2, **fast)
    norms = read_embedding(capped.path, "<b>").norm(dim=1)
    assert torch.all(norms <= longest * (1 + 1e-5)) and torch.all(norms > 0.5 * longest)
    fixed = train_textual_inversion(images, "<c>", "object", "builtin:tiny", tmp_path / "c.safetensors",
                                    max_norm=0.1, **fast)
    assert float(read_embedding(fixed.path, "<c>").norm()) == pytest.approx(0.1, rel=1e-5)
    out = tmp_path / "e.safetensors"  # resuming with another cap is allowed, and said
    train_textual_inversion(images, "<e>", "object", "builtin:tiny", out, **{**fast, "steps": 2, "checkpoint_every": 2})
    with caplog.at_level("WARNING", logger="diffugen"):
        train_textual_inversion(images, "<e>", "object", "builtin:tiny", out, resume=True, max_norm=0.1,
                                **{**fast, "checkpoint_every": 2})
    assert "changed settings {'max_norm': (None, '0.1')}" in caplog.text
    with pytest.raises(DiffuGenError, match="--max-norm must be a positive number or 'vocab'; got -1"):
        train_textual_inversion(images, "<d>", "object", "builtin:tiny", tmp_path / "d.safetensors",
                                max_norm=-1, **fast)


def test_one_init_word_per_vector():
    from diffugen.textual_inversion.training import add_token, init_token_ids

    pipe = build_tiny_pipeline()
    tok, emb = pipe.tokenizer, pipe.text_encoder.get_input_embeddings().weight
    red, obj = (tok(w, add_special_tokens=False).input_ids[0] for w in ("red", "object"))
    assert init_token_ids(tok, "red", 3) == [red] * 3
    ids = init_token_ids(tok, "red object", 2)
    assert ids == [red, obj]
    new = add_token(tok, pipe.text_encoder, ["<p>", "<p>_1"], ids)
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[new[0]], emb[red]) and torch.equal(rows[new[1]], emb[obj])
    with pytest.raises(DiffuGenError, match=r"'a red object' is 3 words: give one word, or one per vector \(--num-vectors 2\)"):
        init_token_ids(tok, "a red object", 2)


def test_refusals(images, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(DiffuGenError, match=r"no such folder .*missing"):
        train_textual_inversion(tmp_path / "missing", "<x>", "object", "builtin:tiny", out, **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffuGenError, match=r"empty holds no images"):
        train_textual_inversion(tmp_path / "empty", "<x>", "object", "builtin:tiny", out, **FAST)
    one_token = r"'zebracorn' is \d+ tokens .* pick a one-token word close to the concept, such as 'object'"
    with pytest.raises(DiffuGenError, match=one_token):
        train_textual_inversion(images, "<x>", "zebracorn", "builtin:tiny", out, **FAST)
    with pytest.raises(DiffuGenError, match="already in the model's vocabulary"):
        train_textual_inversion(images, "car", "object", "builtin:tiny", out, **FAST)
    with pytest.raises(DiffuGenError, match="without spaces"):
        train_textual_inversion(images, "<my thing>", "object", "builtin:tiny", out, **FAST)
    with pytest.raises(DiffuGenError, match="multiple of 16"):
        train_textual_inversion(images, "<x>", "object", "builtin:tiny", out, **{**FAST, "size": 40})
    assert not out.exists()


def test_trained_embedding_labels_in_generate(images, tmp_path, dataset_name):
    out = tmp_path / "thing.safetensors"
    train_textual_inversion(images, "<thing>", "object", "builtin:tiny", out, **{**FAST, "steps": 2})
    cfg = small_config(dataset_name, tmp_path / "gen", templates=["a {view} view of a <thing> on a road"],
                       attributes={"view": ["rear", "front"]}, class_words=[], seeds=[11],
                       textual_inversion=[{"path": str(out), "token": "<thing>"}])
    summary = generate(parse_config(cfg))
    assert summary.tasks[0].made == 2
    ds = fo.load_dataset(dataset_name)
    assert ds.mask_targets["daam_segmentation"] == {1: "thing"}
    for s in ds:
        assert Path(s.filepath).is_file() and s.class_words == ["<thing>"]
        assert s.word_heatmaps[0].word == "<thing>" and s.word_heatmaps[0].label == "thing"


def test_cli(images, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    rc = cli(["textual-inversion", "train", "--images", str(images), "--token", "<cli>", "--init-word", "object",
              "--model", "builtin:tiny", "--out", str(out), "--steps", "2", "--batch-size", "2", "--size", "64",
              "--max-norm", "vocab"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and Path(printed[-1]).is_file() and Path(printed[-1]) == out.resolve()
    assert '"textual_inversion": [{"path": ' in printed[-2] and '"token": "<cli>"' in printed[-2]
    rc = cli(["textual-inversion", "train", "--images", str(images), "--token", "<cli>", "--init-word", "object",
              "--model", "builtin:tiny", "--out", str(out), "--steps", "2"])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    rc = cli(["textual-inversion", "train", "--images", str(images), "--token", "<cli2>", "--init-word", "object",
              "--model", "builtin:tiny", "--out", str(tmp_path / "cli2.safetensors"), "--max-norm", "long"])
    assert rc == 2 and "--max-norm must be a positive number or 'vocab'; got 'long'" in capsys.readouterr().err
