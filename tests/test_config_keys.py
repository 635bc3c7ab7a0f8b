"""Config keys of the original DiffuGen act as they did there: nothing is accepted and ignored."""

import logging
from pathlib import Path

import fiftyone as fo
import pytest
from conftest import small_config

from diffugen.config import parse_config
from diffugen.errors import ConfigError, ModelNotFoundError
from diffugen.generation.runner import generate
from diffugen.labels.yolo import check_class_names

ONE = {"view": ["rear"], "object": ["car", "bus"], "time": ["noon"]}


def test_unsupervised_true_skips_absent_label_model_weights_with_a_warning(tmp_path, dataset_name, caplog):
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", attributes=ONE, seeds=[1], unsupervised=True,
                                    label_model={"weights": str(tmp_path / "absent-seg.pt")}))
    with caplog.at_level(logging.WARNING):
        summary = generate(cfg)
    assert summary.tasks[0].made == 2
    ds = fo.load_dataset(dataset_name)
    assert ds.count("daam_detections") == 2 and "yolo_detections" not in ds.get_field_schema()
    assert any("absent-seg.pt" in r.getMessage() and "unsupervised" in r.getMessage() for r in caplog.records)


def test_unsupervised_false_needs_a_label_model_and_absent_weights_are_an_error(tmp_path, dataset_name):
    with pytest.raises(ConfigError, match="unsupervised: false"):
        parse_config(small_config(dataset_name, tmp_path / "out", unsupervised=False))
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", unsupervised=False,
                                    label_model={"weights": str(tmp_path / "absent-seg.pt")}))
    with pytest.raises(ModelNotFoundError, match="absent-seg.pt"):
        generate(cfg)
    assert not fo.dataset_exists(dataset_name)


def test_images_per_shard_puts_each_run_of_images_in_its_own_folder(tmp_path, dataset_name):
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", images_per_shard=3))  # 8 images
    generate(cfg)
    ds = fo.load_dataset(dataset_name)
    folders = sorted({Path(p).parent.parent.name for p in ds.values("filepath")})
    assert folders == ["00000", "00001", "00002"]
    per_folder = [sum(Path(p).parent.parent.name == f for p in ds.values("filepath")) for f in folders]
    assert per_folder == [3, 3, 2]
    for s in ds:  # a sample's heatmaps and masks sit in its image's shard folder
        shard = Path(s.filepath).parent.parent
        assert Path(s.heatmap.map_path).parent.parent == shard == Path(s.daam_segmentation.mask_path).parent.parent
    assert generate(cfg).tasks[0].made == 0  # resume finds them


def test_label_model_classes_file_must_match_the_weights(tmp_path):
    names = ["car", "bus", "truck"]
    good = tmp_path / "classes.txt"
    good.write_text("car\nbus\ntruck\n")
    check_class_names(good, names, "w.pt")
    check_class_names(["car", "bus", "truck"], names, "w.pt")
    bad = tmp_path / "bad.txt"
    bad.write_text("car\ntruck\nbus\n")
    with pytest.raises(ModelNotFoundError, match=r"differ from position 1"):
        check_class_names(bad, names, "w.pt")
    with pytest.raises(ModelNotFoundError, match="class-names file not found"):
        check_class_names(tmp_path / "nope.txt", names, "w.pt")


def test_legacy_configs_label_their_object_names(tmp_path):
    raw = {"dataset_name": "piano-road", "dataset_root": str(tmp_path), "dataset_classes": ["car"],
           "txt2img": {"stable_diffusion_model": "builtin:tiny", "object_names": ["grand piano", "car"],
                       "prompts": ["a {object_name} lying on a road"], "seed_range": {"min": 0, "max": 9}}}
    cfg = parse_config(raw)
    assert cfg.class_words == ["grand piano", "car"]
    assert cfg.dataset_classes() == ["car", "grand piano"]
