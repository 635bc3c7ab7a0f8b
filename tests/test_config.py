"""Config validation: the original DiffuGen configs, the general schema and every bad-input error."""

import json
from pathlib import Path

import pytest

from diffugen.config import load_config, parse_config
from diffugen.errors import ConfigError
from diffugen.generation.planner import plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_original_cars_config_loads_unchanged_and_means_the_same():
    cfg = load_config(EXAMPLES / "original" / "cars.json")
    assert cfg.dataset_name == "cars" and cfg.output_root == "datasets_output"
    assert (cfg.width, cfg.height, cfg.steps) == (512, 512, 50)
    assert cfg.classes == ["car", "sedan", "suv", "pickup", "bus"]
    assert cfg.class_words == cfg.classes
    assert cfg.label_model.weights == "models/seg/yolov8l-seg.pt"
    assert cfg.label_model.class_map["pickup"] == "truck"
    assert cfg.unsupervised is False
    t2i = cfg.txt2img
    assert t2i.model == "mshenoda/realistic_vision_v4"
    assert (t2i.seeds.min, t2i.seeds.max, t2i.seeds.count_per_prompt) == (9092091, 9982091, 1)
    assert set(t2i.attributes) == {"view_point", "object_name", "time_of_day", "sky_condition", "weather_condition"}
    assert t2i.attributes["time_of_day"] == ["sunrise", "day", "noon", "sunset"]
    assert len(t2i.templates) == 3 and "{object_name}++" in t2i.templates[0]
    # img2img: the same templates, with these attributes replaced
    assert cfg.img2img.model == "mshenoda/realistic_vision_v4"
    assert cfg.img2img.source.task == "txt2img"
    assert cfg.task_attributes("img2img")["weather_condition"] == ["flood rain", "raining", "foggy smoke", "sunny"]
    assert cfg.task_attributes("img2img")["object_name"] == ["car", "sedan", "suv", "pickup", "bus"]
    # inpaint: per class word, the descriptions painted into its mask
    assert cfg.inpaint.model == "mshenoda/realistic_vision_inpainting"
    assert cfg.inpaint.replacements["sedan"][0] == "white ford fusion"
    assert cfg.tasks() == ["txt2img", "img2img", "inpaint"]
    # 3 templates × 2 views × 5 objects × 4 times × 2 skies × 2 weathers × 1 seed
    items = plan(cfg, "txt2img")
    assert len(items) == 480 and len({i.key for i in items}) == 480
    assert all(9092091 <= i.seed <= 9982091 for i in items)
    assert all(i.class_words == ((i.attribute_dict["object_name"],) * 2,) for i in items)


def test_original_car_accident_config_has_its_embedding_and_labels_the_token():
    cfg = load_config(EXAMPLES / "original" / "car-accident.json")
    assert [(t.path, t.token) for t in cfg.textual_inversion] == [("models/sd/embeddings/car-accident.pt", "<car-accident>")]
    assert "<car-accident>" in cfg.all_class_words()
    assert cfg.class_of("<car-accident>") == "car-accident"
    assert "car-accident" in cfg.dataset_classes()
    items = plan(cfg, "txt2img")
    assert len(items) == 2 * 3 * 2 * 4 * 3  # templates × objects × views × times × weathers (skies unused)
    assert all(("<car-accident>", "car-accident") in i.class_words for i in items)


def test_general_schema_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "dataset_name: y\ntemplates: ['a {color} car']\nattributes: {color: [red, blue]}\n"
        "class_words: [car]\nclass_map: {car: vehicle}\nseeds: [1, 2, 3]\nimage_count: 1\n"
    )
    cfg = load_config(path)
    items = plan(cfg, "txt2img")
    assert len(items) == 1 and items[0].seed in {1, 2, 3}  # image_count: 1 image
    assert items[0].class_words == (("car", "vehicle"),)
    assert cfg.dataset_classes() == ["vehicle"]


def _error(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "test.json")
    return str(exc.value)


BASE = {"dataset_name": "d", "templates": ["a {x} car"], "attributes": {"x": ["red"]}}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"width": 500}, ["width", "multiple of 8", "500"]),
        ({"height": -8}, ["height", "-8"]),
        ({"steps": 0}, ["steps", "0"]),
        ({"widht": 512}, ["widht", "unknown field", "did you mean 'width'"]),
        ({"dataset_name": "../escape"}, ["dataset_name", "../escape"]),
        ({"seeds": {"min": 10, "max": 5}}, ["seeds", "max (5) must be >= min (10)"]),
        ({"templates": ["a {y} car"]}, ["{y}", "no attribute list is named 'y'"]),
        ({"labels": {"threshold": 1.5}}, ["labels.threshold", "1.5"]),
        ({"img2img": {"strength": 2}}, ["img2img.strength", "2"]),
        ({"dtype": "float8"}, ["dtype", "float8"]),
        ({"batch_size": "four"}, ["batch_size", "four"]),
        ({"class_map": {"car": "truck"}, "classes": ["car"]}, ["class_map['car']", "truck", "not one of classes"]),
    ],
)
def test_bad_config_names_field_value_and_expectation(change, expected):
    message = _error({**BASE, **change})
    for text in expected:
        assert text in message, (text, message)


def test_missing_required_field_and_bad_files(tmp_path):
    assert "dataset_name" in _error({"templates": ["a car"]})
    assert "nothing to generate" in _error({"dataset_name": "d"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="top level must be an object"):
        load_config(listed)
