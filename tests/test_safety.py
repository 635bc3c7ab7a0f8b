"""Nothing lost, nothing duplicated, nobody in: hostile files, escaping paths, crashes, concurrent runs,
and bad input that gets one clear line (exit 2) with nothing written."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fiftyone as fo
from conftest import small_config
from diffugen.cli import main as cli
from diffugen.config import parse_config
from diffugen.generation.runner import Runner, generate
from diffugen.labels.daam import LabelParams
from diffugen.labels.relabel import relabel

MARKER = "diffugen-pickle-ran"


@pytest.fixture
def evil_weights(tmp_path):
    """A .pt whose unpickling runs a shell command (it would create the marker file)."""
    import torch

    marker = tmp_path / MARKER

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil-seg.pt"
    torch.save({"model": Evil()}, path)
    return path, marker


def test_pickled_code_in_yolo_weights_never_runs(evil_weights, ds, write_config, dataset_name, tmp_path, capsys):
    path, marker = evil_weights
    cfg = write_config(small_config(dataset_name, tmp_path / "out", label_model={"weights": str(path)}))
    assert cli(["generate", str(cfg)]) == 2
    assert cli(["label", ds.name, "--yolo", str(path)]) == 2
    assert cli(["train", ds.name, "--model", str(path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("refused") == 3 and "--trust-weights" in err
    assert not marker.exists() and not fo.dataset_exists(dataset_name) and "yolo_detections" not in ds.get_field_schema()
    text = tmp_path / "notes-seg.pt"
    text.write_text("not a model")
    assert cli(["label", ds.name, "--yolo", str(text)]) == 2
    assert str(text) in capsys.readouterr().err


def test_a_symlinked_folder_that_leaves_the_output_root_is_refused(tmp_path, write_config, dataset_name, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    task_dir = tmp_path / "out" / dataset_name / "txt2img"
    task_dir.mkdir(parents=True)
    (task_dir / "images").symlink_to(outside, target_is_directory=True)
    assert cli(["generate", str(write_config(small_config(dataset_name, tmp_path / "out")))]) == 2
    assert "outside the output root" in capsys.readouterr().err
    assert list(outside.iterdir()) == [] and not fo.dataset_exists(dataset_name)


def test_dataset_names_from_the_command_line_are_checked(tmp_path, write_config, dataset_name, capsys):
    cfg = write_config(small_config(dataset_name, tmp_path / "out"))
    for bad in ("a/b", "../X", str(tmp_path / "abs")):
        assert cli(["generate", str(cfg), "--dataset", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --dataset:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_export_overwrite_replaces_only_an_earlier_export(ds, tmp_path, dataset_name):
    from diffugen.curation.export import export_dataset
    from diffugen.errors import OutputPathError

    root = tmp_path / "root"
    generate(parse_config(small_config(dataset_name, root, seeds=[1],
                                       attributes={"view": ["rear"], "object": ["car"], "time": ["noon"]})))
    other = fo.load_dataset(dataset_name)
    files = sorted(p for p in (root / dataset_name).rglob("*") if p.is_file())
    with pytest.raises(OutputPathError, match="not an earlier DiffuGen export"):
        export_dataset(ds, root / dataset_name, field="daam_detections", overwrite=True)
    heatmaps = Path(other.first().heatmap.map_path).parent
    with pytest.raises(OutputPathError, match="holds the dataset's media"):
        export_dataset(other, heatmaps, field="daam_detections", overwrite=True)
    assert sorted(p for p in (root / dataset_name).rglob("*") if p.is_file()) == files
    out = tmp_path / "export"
    export_dataset(ds, out, field="daam_detections")
    export_dataset(ds, out, field="daam_detections", overwrite=True)  # an export may replace an export
    assert (out / "dataset.yaml").is_file()


def test_relabel_writes_new_mask_files_and_records_its_parameters_per_sample(ds):
    before = {s.id: (s.daam_segmentation.mask_path, Path(s.daam_segmentation.mask_path).read_bytes()) for s in ds}
    assert set(ds.distinct("daam_params.threshold")) == {"otsu"}
    clone = ds.clone()
    try:
        relabel(clone.limit(4), LabelParams(threshold=0.9))
        for s in ds:  # the original's masks: same paths, same bytes
            path, data = before[s.id]
            assert s.daam_segmentation.mask_path == path and Path(path).read_bytes() == data
        relabeled = clone.limit(4)
        assert set(relabeled.distinct("daam_params.threshold")) == {"0.9"}
        assert set(clone.skip(4).distinct("daam_params.threshold")) == {"otsu"}
        assert not set(relabeled.values("daam_segmentation.mask_path")) & {p for p, _ in before.values()}
    finally:
        clone.delete()


def test_a_truncated_image_is_noticed_and_made_again(tmp_path, dataset_name):
    cfg = parse_config(small_config(dataset_name, tmp_path / "out"))
    generate(cfg)
    ds = fo.load_dataset(dataset_name)
    victim = ds.first()
    data = Path(victim.filepath).read_bytes()
    Path(victim.filepath).write_bytes(data[:100])
    summary = generate(cfg)
    assert summary.tasks[0].made == 1
    ds.reload()
    assert len(ds) == 8 and len(set(ds.values("key"))) == 8
    assert Path(ds.match(fo.ViewField("key") == victim.key).first().filepath).read_bytes() == data


def test_bad_input_gets_one_clear_line_and_writes_nothing(tmp_path, write_config, dataset_name, capsys):
    out = tmp_path / "out"
    cases = [
        (small_config(dataset_name, out, seeds=[2**64]), "seeds[0]"),
        (small_config(dataset_name, out, device="banana"), "device"),
        (small_config(dataset_name, out, label_model={"weights": "x.pt", "device": "gpu"}), "label_model.device"),
    ]
    for raw, field in cases:
        assert cli(["generate", str(write_config(raw))]) == 2
        assert field in capsys.readouterr().err
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(small_config(dataset_name, out, templates=["a car at caf\u00e9"]), ensure_ascii=False).encode("latin-1"))
    assert cli(["generate", str(latin)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert cli(["generate", str(write_config(small_config(dataset_name, a_file)))]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not out.exists() and not fo.dataset_exists(dataset_name)
    for argv in (["label", "x", "--yolo", "w.pt", "--device", "banana"], ["label", "x", "--yolo", "w.pt", "--batch-size", "0"],
                 ["train", "x", "--device", "banana"], ["app", "x", "--port", "99999"],
                 ["textual-inversion", "train", "--images", "i", "--token", "<t>", "--init-word", "a", "--model", "m",
                  "--out", "o.safetensors", "--dtype", "banana"]):
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        assert exit_.value.code == 2
        assert argv[-2] in capsys.readouterr().err
    empty = fo.Dataset()
    assert cli(["status", empty.name]) == 0
    assert "samples: 0" in capsys.readouterr().out
    empty.delete()


@pytest.mark.parametrize("argv, line", [
    (["label", "x", "--yolo", "w.pt", "--batch-size", "0"],
     "diffugen label: error: argument --batch-size: expected a whole number >= 1, got '0'"),
    (["train", "x", "--device", "banana"], "diffugen train: error: argument --device: expected "),
    (["app", "x", "--port", "99999"], "diffugen app: error: argument --port: expected a port number 1-65535, got '99999'"),
    (["export", "x", "--out", "o", "--format", "tiff"], "diffugen export: error: argument --format: invalid choice: 'tiff'"),
    (["generate", "c.json", "--no-such-option"], "diffugen: error: unrecognized arguments: --no-such-option"),
    (["textual-inversion"], "diffugen textual-inversion: error: the following arguments are required"),
])
def test_bad_options_are_one_line_naming_the_option_and_what_was_expected(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith(line), captured.err
    assert "usage:" not in captured.err


def test_a_run_that_fails_before_its_first_sample_leaves_no_dataset(tmp_path, dataset_name):
    class Broken(Runner):
        def run_batch(self, *args, **kwargs):
            raise RuntimeError("the GPU fell off")

    cfg = parse_config(small_config(dataset_name, tmp_path / "out"))
    with pytest.raises(RuntimeError, match="fell off"):
        generate(cfg, runner=Broken(cfg))
    assert not fo.dataset_exists(dataset_name)


def test_a_huge_attribute_product_is_sampled_without_being_listed():
    from diffugen.generation.planner import plan

    attributes = {f"a{i}": [f"v{i}{j}" for j in range(10)] for i in range(10)}
    template = " ".join("{" + a + "}" for a in attributes) + " car"
    cfg = parse_config({"dataset_name": "big", "templates": [template], "attributes": attributes,
                        "class_words": ["car"], "image_count": 4})
    t0 = time.perf_counter()
    items = plan(cfg, "txt2img")
    assert len(items) == 4 and len({i.key for i in items}) == 4 and time.perf_counter() - t0 < 5


def test_what_would_silently_make_less_is_warned_about():
    from diffugen.generation.planner import plan_warnings

    cfg = parse_config({"dataset_name": "w", "templates": ["a {v} car", " "], "class_words": ["car", "truck"],
                        "attributes": {"v": ["red", "red", "blue"]}})
    warnings = "\n".join(plan_warnings(cfg))
    assert "empty template" in warnings and "'red'" in warnings and "'truck' occurs in no template" in warnings
    none = parse_config({"dataset_name": "w", "templates": ["a {v} car"], "attributes": {"v": []}})
    warnings = "\n".join(plan_warnings(none))
    assert "no values" in warnings and "no class words" in warnings


# ---- crashes and concurrent runs (other processes) ---------------------------------------------------
def _generate_process(config: Path) -> subprocess.Popen:
    code = "import sys; from diffugen.cli import main; sys.exit(main(['generate', sys.argv[1]]))"
    return subprocess.Popen([sys.executable, "-c", code, str(config)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _media_files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def _referenced(ds) -> set[str]:
    from diffugen.store.repair import media_paths

    return set(media_paths(ds))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path, write_config, dataset_name):
    from diffugen.store.repair import media_intact

    batch = 2
    raw = small_config(dataset_name, tmp_path / "out", batch_size=batch, width=64, height=64,
                       seeds=[1, 2, 3, 4], attributes={"view": ["rear", "front"], "object": ["car", "bus"], "time": ["noon"]})
    config = write_config(raw)
    total = 16
    rng = random.Random(7)
    for attempt in range(3):
        proc = _generate_process(config)
        deadline = time.monotonic() + 120
        made = 0
        while time.monotonic() < deadline and proc.poll() is None:  # let it make some images, then kill it
            made = len(list((tmp_path / "out").rglob("images/*.png")))
            if made >= 2 + attempt * 4 + rng.randint(0, 2):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        images = [p for p in (tmp_path / "out").rglob("images/*.png")]
        ds = fo.load_dataset(dataset_name) if fo.dataset_exists(dataset_name) else None
        kept = len(ds) if ds is not None else 0
        assert kept >= len(images) - batch, (attempt, kept, len(images))  # lost at most the batch in flight
    assert cli(["generate", str(config)]) == 0
    ds = fo.load_dataset(dataset_name)
    keys = ds.values("key")
    assert len(keys) == total and len(set(keys)) == total
    referenced = _referenced(ds)
    assert all(media_intact(p) for p in referenced)
    assert _media_files(tmp_path / "out" / dataset_name) == referenced  # no orphan, no temporary file


@pytest.mark.slow
def test_three_concurrent_runs_of_one_config_make_each_key_once(tmp_path, write_config, dataset_name):
    config = write_config(small_config(dataset_name, tmp_path / "out", batch_size=2, width=64, height=64))
    procs = [_generate_process(config) for _ in range(3)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    ds = fo.load_dataset(dataset_name)
    keys = ds.values("key")
    assert len(keys) == 8 and len(set(keys)) == 8
    assert _media_files(tmp_path / "out" / dataset_name) == _referenced(ds)
    masks = [np.asarray(fo.Segmentation(mask_path=p).get_mask()) for p in ds.values("daam_segmentation.mask_path")]
    assert all(m.size for m in masks)


def test_an_embedding_that_holds_no_vectors_is_a_clear_error(tmp_path, write_config, dataset_name, capsys):
    import torch

    path = tmp_path / "words.pt"
    torch.save({"<x>": "not a tensor"}, path)
    raw = small_config(dataset_name, tmp_path / "out", textual_inversion=[{"path": str(path), "token": "<x>"}])
    assert cli(["generate", str(write_config(raw))]) == 2
    assert "not a textual-inversion embedding: it holds a str" in capsys.readouterr().err
    assert not fo.dataset_exists(dataset_name)
