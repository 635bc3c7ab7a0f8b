"""Supervised labels with real ultralytics: bootstrap-train from DAAM labels, label, compare."""

import fiftyone as fo
import numpy as np
import pytest
from conftest import small_config

from diffugen.cli import main as cli
from diffugen.config import parse_config
from diffugen.errors import DiffuGenError, ModelNotFoundError
from diffugen.generation.runner import generate
from diffugen.labels.compare import DISAGREEMENT_VIEW, LOW_SCORE_VIEW, Match, match_labels
from diffugen.labels.yolo import label_yolo, load_yolo, resolve_class_map

pytestmark = pytest.mark.slow  # trains ultralytics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset of 24 DAAM-labeled tiny images and a YOLO-seg trained on it for one epoch."""
    root = tmp_path_factory.mktemp("sup")
    name = "supervised-module"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    cfg = parse_config(small_config(name, root / "out", width=64, height=64, batch_size=8,
                                    seeds=[1, 2, 3], attributes={"view": ["rear", "front"], "object": ["car", "bus"],
                                                                  "time": ["noon", "sunset"]}))
    generate(cfg)
    ds = fo.load_dataset(name)
    assert len(ds) == 24
    assert cli(["train", name, "--epochs", "1", "--imgsz", "64", "--batch", "8", "--out", str(root / "run")]) == 0
    run = ds.info["diffugen_yolo_runs"][-1]
    yield ds, run
    fo.delete_dataset(name)


def test_train_records_run_and_weights(trained):
    ds, run = trained
    assert run["weights"].endswith(".pt") and run["counts"]["train"] + run["counts"]["val"] == 24
    assert run["counts"]["val"] >= 1 and run["epochs"] == 1 and run["counts"]["labels"] > 0
    assert "metrics/mAP50(M)" in run["metrics"]
    model = load_yolo(run["weights"])
    assert sorted(model.names.values()) == ["bus", "car"]


def test_label_with_trained_model(trained):
    ds, run = trained
    n = label_yolo(ds, run["weights"], conf=0.0001, imgsz=64, batch_size=8)
    assert n == 24
    assert ds.count("yolo_detections") == 24 and ds.count("yolo_polygons") == 24 and ds.count("yolo_segmentation") == 24
    assert ds.mask_targets["yolo_segmentation"] == ds.mask_targets["daam_segmentation"]
    # the labels are exactly the model's predictions: same count, classes and confidences
    model = load_yolo(run["weights"])
    s = ds.first()
    result = model.predict(s.filepath, imgsz=64, conf=0.0001, verbose=False, device="cpu")[0]
    confs = sorted(float(c) for c in result.boxes.conf)
    dets = s.yolo_detections.detections
    assert sorted(d.confidence for d in dets) == pytest.approx(confs, rel=1e-5)
    assert {d.label for d in dets} <= {"car", "bus"}
    assert len(s.yolo_polygons.polylines) == len(dets)
    mask = s.yolo_segmentation.get_mask()
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2}
    for d in dets:  # mask / box consistency
        x, y, w, h = d.bounding_box
        assert 0 <= x <= 1 and 0 <= y <= 1 and d.mask.shape[0] <= round(h * 64) + 1 and d.mask.shape[1] <= round(w * 64) + 1


def test_compare_stores_matches_agreement_eval_and_views(trained):
    ds, run = trained
    if "yolo_detections" not in ds.get_field_schema() or ds.count("yolo_detections") < 24:
        label_yolo(ds, run["weights"], conf=0.0001, imgsz=64)
    assert cli(["compare", ds.name, "--iou", "0.3", "--agreement", "0.9"]) == 0
    assert ds.count("agreement") == 24
    assert all(0 <= a <= 1 for a in ds.values("agreement"))
    s = ds.first()
    for d in s.daam_detections.detections + s.yolo_detections.detections:
        assert d["matched"] == (d["match_iou"] >= 0.3)
    assert "daam_vs_yolo" in ds.list_evaluations()
    assert set(ds.distinct("daam_detections.detections.daam_vs_yolo")) <= {"tp", "fp", "fn"}
    assert {DISAGREEMENT_VIEW, LOW_SCORE_VIEW} <= set(ds.list_saved_views())
    assert len(ds.load_saved_view(DISAGREEMENT_VIEW)) == len(ds.match(fo.ViewField("agreement") < 0.9))


def _det(label, box, mask=None):
    return fo.Detection(label=label, bounding_box=box, mask=mask)


def test_matching_on_constructed_pairs():
    # 100×100 image; A: a 20×20 box at (10,10); B: same box shifted by 10 px → IoU = 200/600 = 1/3
    a = [_det("car", [0.1, 0.1, 0.2, 0.2], np.ones((20, 20), bool))]
    b = [_det("car", [0.2, 0.1, 0.2, 0.2], np.ones((20, 20), bool))]
    m = match_labels(a, b, 100, 100, threshold=0.3)
    assert m.a_iou[0] == pytest.approx(1 / 3) and m.matched_pairs == 1
    assert m.agreement == pytest.approx((1 / 3) / 1)
    # different class never matches; identical masks give IoU 1; extra unmatched labels lower agreement
    assert match_labels(a, [_det("bus", [0.1, 0.1, 0.2, 0.2])], 100, 100).matched_pairs == 0
    same = match_labels(a, a + [_det("car", [0.7, 0.7, 0.1, 0.1])], 100, 100)
    assert same.a_iou[0] == pytest.approx(1.0) and same.agreement == pytest.approx(0.5)
    assert Match(np.zeros(0), np.zeros(0), 0.5).agreement == 1.0
    # boxes stand in when there is no mask
    boxes = match_labels([_det("car", [0, 0, 0.5, 0.5])], [_det("car", [0, 0, 0.5, 0.25])], 100, 100)
    assert boxes.a_iou[0] == pytest.approx(0.5)


def test_errors_before_any_work(trained, tmp_path, capsys):
    ds, run = trained
    with pytest.raises(ModelNotFoundError, match="yolov8n-seg.pt"):
        label_yolo(ds, tmp_path / "yolov8n-seg.pt")
    assert not (tmp_path / "yolov8n-seg.pt").exists()
    with pytest.raises(DiffuGenError, match="no class 'truck'"):
        resolve_class_map(["car", "bus"], ["car", "pickup"], {"car": "car", "pickup": "truck"})
    with pytest.raises(DiffuGenError, match="empty"):
        label_yolo(ds.match(fo.ViewField("seed") == -1), run["weights"])
    before = ds.count("yolo_detections")
    assert cli(["label", ds.name, "--yolo", run["weights"], "--class-map", "car=truck"]) == 2
    assert "no class 'truck'" in capsys.readouterr().err
    assert ds.count("yolo_detections") == before
    assert resolve_class_map(["car", "bus"], ["sedan", "suv", "bus"], {"sedan": "car", "suv": "car", "bus": "bus"}) == {
        "car": ["sedan", "suv"], "bus": ["bus"]}
    assert cli(["train", ds.name, "--model", str(tmp_path / "start.pt")]) == 2
    assert "starting weights not found" in capsys.readouterr().err


def test_yolo_runs_during_generation(trained, tmp_path, dataset_name):
    ds, run = trained
    cfg = parse_config(small_config(dataset_name, tmp_path / "out", width=64, height=64, seeds=[5],
                                    label_model={"weights": run["weights"], "conf": 0.0001, "imgsz": 64},
                                    unsupervised=False))
    generate(cfg)
    new = fo.load_dataset(dataset_name)
    assert len(new) == 4 and new.count("yolo_detections") == 4 and new.count("daam_detections") == 4
    missing = parse_config(small_config(dataset_name + "x", tmp_path / "out2", label_model={"weights": str(tmp_path / "nope.pt")}))
    with pytest.raises(ModelNotFoundError, match="nope.pt"):
        generate(missing)
    assert not fo.dataset_exists(dataset_name + "x")
