"""The review panel: its library functions (curation.review, plugin.panel) and its Python handlers,
called with a stand-in for the App's execution context. tests/test_browser.py drives it in the App."""

import base64

import cv2
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.panel import PanelRef

from diffugen.curation import review as rv
from diffugen.errors import DiffuGenError
from diffugen.plugin import panel as pp
from diffugen.plugin.install import plugin_root
from operators.panel import ReviewPanel

PLUGIN = "@diffugen/diffugen"


def _ids(ds, field="daam_detections"):
    return sorted(ds.values(f"{field}.detections.id", unwind=True))


def _tags(ds, label_id, field="daam_detections"):
    return set(ds.select_labels(ids=[label_id], fields=field).count_label_tags())


def _queued(ds, n=4):
    """A queue of the ``n`` lowest-scored DAAM labels (at least: ties)."""
    scores = sorted(ds.values("daam_detections.detections.confidence", unwind=True))
    return rv.build_review_queue(ds, min_score=scores[n - 1] + 1e-6)


# ---- the library: queue, decisions, the other labeler, re-threshold, histograms --------------------
def test_review_queue_lists_labels_with_reasons_and_counts_what_is_left(ds):
    n = _queued(ds)
    entries = rv.review_queue(ds)
    assert len(entries) == n >= 4
    order = ds.values("id")
    positions = [order.index(e.sample_id) for e in entries]
    assert positions == sorted(positions)  # sample order
    for e in entries:
        assert e.decision is None and any("below the review threshold" in r for r in e.reasons)
    assert rv.queue_counts(ds) == rv.QueueCounts(total=n) and rv.queue_counts(ds).left == n
    first, second, third = entries[:3]
    rv.decide_label(ds, first.label_id, rv.APPROVED)
    rv.decide_label(ds, second.label_id, rv.REJECTED)
    rv.decide_label(ds, third.label_id, rv.APPROVED)
    rv.decide_label(ds, third.label_id, rv.REJECTED)  # a new decision replaces the earlier one
    rv.decide_label(ds, third.label_id, None)  # and None takes it back
    assert _tags(ds, first.label_id) == {rv.NEEDS_REVIEW, rv.APPROVED}
    assert _tags(ds, third.label_id) == {rv.NEEDS_REVIEW}
    counts = rv.queue_counts(ds)
    assert (counts.total, counts.approved, counts.rejected, counts.left) == (n, 1, 1, n - 2)
    assert [e.decision for e in rv.review_queue(ds)[:3]] == [rv.APPROVED, rv.REJECTED, None]
    # apply_review reads the same tags
    rv.apply_review(ds, min_score=ds.info["diffugen_review_queue"]["min_score"])
    curated = set(ds.values("curated.detections.source_id", unwind=True))
    assert first.label_id in curated and second.label_id not in curated and third.label_id not in curated


def test_decide_label_refuses_unknown_decisions_and_labels(ds):
    _queued(ds)
    label = rv.review_queue(ds)[0].label_id
    with pytest.raises(DiffuGenError, match="decision must be"):
        rv.decide_label(ds, label, "maybe")
    with pytest.raises(DiffuGenError, match="no label 'ffffffffffffffffffffffff'"):
        rv.decide_label(ds, "ffffffffffffffffffffffff", rv.APPROVED)
    assert _tags(ds, label) == {rv.NEEDS_REVIEW}


def test_label_reasons_say_why_in_words():
    assert rv.label_reasons({"confidence": 0.9, "area": 0.2}, 0.5) == []
    low = rv.label_reasons({"confidence": 0.2, "area": 0.2}, 0.5)
    assert low == ["score 0.20 is below the review threshold 0.50"]
    assert rv.label_reasons({"area": 0.2}, 0.5) == ["no label score"]
    unmatched = rv.label_reasons({"confidence": 0.9, "matched": False, "match_iou": 0.12, "area": 0.2}, 0.5)
    assert unmatched == ["the other labeler has no matching label (compare_labels, best IoU 0.12)"]
    assert rv.label_reasons({"confidence": 0.9, "area": 0.004}, 0.5) == ["small: its mask covers 0.4% of the image"]
    contested = rv.label_reasons({"confidence": 0.3, "area": 0.2, "share": 0.31, "blob_share": 0.2, "cut_kept": 0.4,
                                  "core_share": 0.25}, 0.5)
    assert contested[1:] == ["other class words draw most of the attention here (this word's share 31%)",
                             "the word's attention is spread over several blobs (this one holds 20%)",
                             "the image's edges cut most of its blob away (it kept 40%)",
                             "it holds a small part of its word's object pixels (25%)"]
    # a word said twice: each of its two objects holds about half of the word, all of its own occurrence's part
    repeated = {"confidence": 0.9, "area": 0.2, "blob_share": 0.45, "core_share": 0.4, "own_blob_share": 0.95,
                "own_core_share": 0.9}
    assert rv.label_reasons(repeated, 0.5) == []
    # no DAAM area (YOLO labels): the box's
    assert rv.label_reasons({"confidence": 0.9, "bounding_box": [0, 0, 0.05, 0.1]}, 0.5) == \
        ["small: its box covers 0.5% of the image"]


def test_unmatched_labels_are_queued_with_their_reason(ds):
    labels = dict(zip(ds.values("daam_detections.detections.id", unwind=True),
                      ds.values("daam_detections.detections.confidence", unwind=True)))
    sure = max(labels, key=labels.get)
    ds.set_label_values("daam_detections.detections.matched", {sure: False})
    ds.set_label_values("daam_detections.detections.match_iou", {sure: 0.25})
    rv.build_review_queue(ds, min_score=0.0)
    (entry,) = rv.review_queue(ds)
    assert entry.label_id == sure
    assert entry.reasons[0] == "the other labeler has no matching label (compare_labels, best IoU 0.25)"


def test_the_other_labelers_labels_for_one_sample(ds):
    _queued(ds)
    assert rv.other_labeler_field(ds, "daam_detections") is None
    assert rv.other_labeler_field(ds, "curated") is None
    with pytest.raises(DiffuGenError, match="no other labeler's field for 'daam_detections'"):
        rv.take_other_labels(ds.limit(1))
    ds.clone_sample_field("daam_detections", "yolo_detections")
    assert rv.other_labeler_field(ds, "daam_detections") == "yolo_detections"
    assert rv.other_labeler_field(ds, "yolo_detections") == "daam_detections"
    entry = rv.review_queue(ds)[0]
    one = ds.select(entry.sample_id)
    summary = rv.take_other_labels(one)
    assert summary.sources == {"yolo_detections": 1}
    assert one.values(rv.CURATED_SOURCE) == ["yolo_detections"]
    assert set(one.values("curated.detections.source", unwind=True)) <= {"yolo"}
    mine = [e for e in rv.review_queue(ds) if e.sample_id == entry.sample_id]
    assert mine and all(e.decision == rv.OTHER_LABELER for e in mine)
    counts = rv.queue_counts(ds)
    assert counts.other == len(mine) and counts.left == counts.total - len(mine)


def test_relabel_for_review_queues_the_new_labels_and_leaves_the_rest(ds):
    _queued(ds)
    entries = rv.review_queue(ds)
    sample_id = entries[0].sample_id
    others = {e.label_id for e in entries if e.sample_id != sample_id}
    one = ds.select(sample_id)
    before = _ids(one)
    queued = rv.relabel_for_review(one, pp.rethreshold_params(None, 0.9))
    after = _ids(one)
    assert after != before  # new labels (new ids)
    min_score = ds.info["diffugen_review_queue"]["min_score"]
    scores = one.values("daam_detections.detections.confidence", unwind=True)
    assert queued == sum(s < min_score for s in scores)
    now = rv.review_queue(ds)
    assert {e.label_id for e in now if e.sample_id != sample_id} == others  # the rest of the queue as it was
    assert {e.label_id for e in now if e.sample_id == sample_id} <= set(after)
    assert ds.info["diffugen_review_queue"]["labels"] == len(now)
    assert ds.info["diffugen_label_params"]["threshold"] == 0.9


def test_score_histograms_per_class(ds):
    hist = rv.score_histograms(ds, "daam_detections", bins=10)
    assert len(hist.edges) == 11 and hist.edges[0] == 0.0 and hist.edges[-1] == 1.0
    classes = ds.values("daam_detections.detections.label", unwind=True)
    assert set(hist.counts) == set(classes) == {"car", "bus"}
    for cls, counts in hist.counts.items():
        assert len(counts) == 10 and sum(counts) == classes.count(cls)
    assert hist.unscored == {}
    with pytest.raises(DiffuGenError, match="bins must be at least 1"):
        rv.score_histograms(ds, bins=0)


def test_queue_settings_default_until_a_queue_is_built(ds):
    assert rv.queue_settings(ds) == rv.QueueSettings()
    rv.build_review_queue(ds, min_score=0.3, include_unmatched=False)
    assert rv.queue_settings(ds) == rv.QueueSettings("daam_detections", 0.3, False)


# ---- the panel's helpers -------------------------------------------------------------------------
def _entry(i, sample, decision=None):
    return rv.QueueEntry(sample, f"l{i}", "car", 0.1, decision, [])


def test_the_cursor_steps_through_undecided_labels_and_wraps():
    es = [_entry(0, "s0"), _entry(1, "s0", rv.APPROVED), _entry(2, "s1"), _entry(3, "s2", rv.REJECTED)]
    assert pp.step(es, "l0").label_id == "l2"
    assert pp.step(es, "l2").label_id == "l0"  # wraps around
    assert pp.step(es, "l0", forward=False).label_id == "l2"
    assert pp.step(es, "l0", undecided_only=False).label_id == "l1"
    assert pp.step(es, "l0", forward=False, undecided_only=False).label_id == "l3"
    assert pp.step(es, None).label_id == "l0" and pp.step(es, "gone").label_id == "l0"
    assert pp.step([_entry(0, "s", rv.APPROVED)], "l0") is None and pp.step([], None) is None
    assert pp.current_entry(es, "l1").label_id == "l1" and pp.current_entry(es, "gone").label_id == "l0"
    assert pp.current_entry([_entry(0, "s", rv.APPROVED)], None).label_id == "l0"
    assert pp.current_entry([], None) is None
    assert pp.first_of_sample(es, "s0").label_id == "l0" and pp.first_of_sample(es, "s2").label_id == "l3"
    assert pp.first_of_sample(es, "nope") is None


def test_rethreshold_params_keep_the_samples_other_parameters():
    stored = {"_cls": "DynamicEmbeddedDocument", "threshold": "otsu", "erode": 0.05, "dilate": 0.0, "min_area": 0.01}
    p = pp.rethreshold_params(stored, 0.7)
    assert (p.threshold, p.erode, p.dilate, p.min_area) == (0.7, 0.05, 0.0, 0.01)
    assert pp.rethreshold_params(stored, 0).threshold == "otsu" and pp.rethreshold_params(None, None).threshold == "otsu"
    with pytest.raises(ValueError):
        pp.rethreshold_params(stored, 1.0)


def test_overlay_draws_the_labels_and_the_heatmap(ds):
    sample = ds.first()
    dets = sample.daam_detections.detections
    chosen = dets[0]
    pic = pp.overlay(sample.filepath, dets, ["bus", "car"], highlight=chosen.id)
    h, w = cv2.imread(sample.filepath).shape[:2]
    assert pic.dtype == np.uint8 and pic.shape[2] == 3 and max(pic.shape[:2]) == 256  # 96×64 grows to 256 px
    assert pic.shape[:2] == (round(h * 256 / w), 256)  # the aspect ratio kept
    assert (np.abs(pic.astype(int) - np.array(pp._HIGHLIGHT)).sum(axis=2) == 0).any()  # the yellow outline
    plain = pp.overlay(sample.filepath)
    heat = pp.overlay(sample.filepath, dets, highlight=chosen.id, heatmap_path=sample.word_heatmaps[0].map_path)
    assert not np.array_equal(plain, pic) and not np.array_equal(heat, pic)
    url = pp.jpeg_data_url(pic)
    back = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert url.startswith("data:image/jpeg;base64,") and back.shape == pic.shape
    with pytest.raises(FileNotFoundError, match="nope.png"):
        pp.overlay("/nope.png")
    assert pp.display_scale(64, 96) == 256 / 96 and pp.display_scale(1000, 2000) == 512 / 2000
    assert pp.display_scale(300, 400) == 1.0


def test_panel_view_says_when_a_media_file_is_gone(ds, tmp_path):
    _queued(ds)
    entries = rv.review_queue(ds)
    sample = ds[entries[0].sample_id]
    sample.filepath = str(tmp_path / "gone.png")
    sample.save()
    view = pp.panel_view(ds, entries, entries[0].label_id, rv.queue_settings(ds))
    assert view.data["images"]["left"] is None and "gone.png" in view.state["left_caption"]
    assert view.state["label_id"] == entries[0].label_id and "Label 1 of" in view.state["label_text"]


def test_histogram_plot_has_a_series_per_class_and_the_threshold():
    hist = rv.ScoreHistograms([0.0, 0.5, 1.0], {"bus": [1, 2], "car": [0, 3]}, {})
    data, layout = pp.histogram_plot(hist, 0.4)
    assert [d["name"] for d in data] == ["bus", "car"] and data[0]["x"] == [0.0, 0.5] and data[1]["y"] == [0, 3]
    assert layout["shapes"][0]["x0"] == 0.4 and "shapes" not in pp.histogram_plot(hist)[1]


def test_every_key_is_a_panel_action_and_the_script_knows_the_component():
    for key, action in pp.KEYS.items():
        assert len(key) == 1 and callable(getattr(ReviewPanel, action)), key
    script = (plugin_root() / "operators" / "review_keys.js").read_text()
    assert '"DiffugenReviewKeys"' in script and "useTriggerPanelEvent" in script
    assert "js_bundle: operators/review_keys.js" in (plugin_root() / "fiftyone.yml").read_text()


def test_the_panel_is_registered_with_the_plugin(plugins_dir):
    panel = foo.get_operator(f"{PLUGIN}/review_panel")
    assert type(panel).__name__ == "ReviewPanel" and panel.config.label == "DiffuGen review"
    assert panel.resolve_panel_config()["on_change_current_sample"] == f"{PLUGIN}/review_panel#on_change_current_sample"


# ---- the panel's handlers, with a stand-in for the App's context ---------------------------------
class _Ops:
    """Records the App operations a handler asks for (``ctx.ops.notify(...)``, ``patch_panel_state``...)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def names(self):
        return [c[0] for c in self.calls]


class _Ctx:
    """What a panel handler reads of an ``ExecutionContext``: the dataset, params, panel state and data."""

    def __init__(self, dataset):
        self.dataset, self.params, self.current_sample, self.panel_id = dataset, {}, None, "panel-1"
        self.panel_state, self.ops = {}, _Ops()
        self.panel = PanelRef(self)

    def run(self, panel, method, **params):
        self.params = {"label_id": self.panel_state.get("label_id"), **params}
        getattr(panel, method)(self)
        return self

    @property
    def data(self):
        return self.panel.data._data


@pytest.fixture
def panel():
    p = ReviewPanel()
    p.plugin_name = PLUGIN
    return p


def test_panel_decides_with_keys_moves_on_and_applies_the_review(ds, panel):
    n = _queued(ds)
    entries = rv.review_queue(ds)
    ctx = _Ctx(ds).run(panel, "on_load")
    s = ctx.panel_state
    assert f"**{n} left** of {n}" in s["header"] and s["label_id"] == entries[0].label_id
    assert f"Label 1 of {n}" in s["label_text"] and "below the review threshold" in s["label_text"]
    assert ctx.data["images"]["left"].startswith("data:image/jpeg") and not s["right_has_image"]
    assert "no other labeler's labels" in s["right_caption"] and ctx.data["histogram"]
    assert s["queue_threshold"] == rv.queue_settings(ds).min_score
    ctx.run(panel, "on_key", key="a")
    assert rv.APPROVED in _tags(ds, entries[0].label_id) and s["label_id"] == entries[1].label_id
    assert f"**{n - 1} left**" in s["header"] and "reload_samples" in ctx.ops.names()
    ctx.run(panel, "on_key", key="r")
    assert rv.REJECTED in _tags(ds, entries[1].label_id) and s["label_id"] == entries[2].label_id
    ctx.run(panel, "on_key", key="p")  # back to the rejected one, and take the decision back
    assert s["label_id"] == entries[1].label_id
    ctx.run(panel, "on_key", key="u")
    assert rv.REJECTED not in _tags(ds, entries[1].label_id) and s["label_id"] == entries[1].label_id
    ctx.run(panel, "on_key", key="r")
    ctx.run(panel, "on_key", key="n")
    assert s["label_id"] == entries[3].label_id
    ctx.run(panel, "on_key", key="1")  # the first class word's heatmap, then the labels again
    assert s["heatmap"] == 1 and "heatmap of" in s["left_caption"]
    ctx.run(panel, "on_key", key="0")
    assert s["heatmap"] == 0 and "heatmap of" not in s["left_caption"]
    ctx.run(panel, "on_key", key="z")  # not a key of the panel: nothing happens
    ctx.run(panel, "on_key", key="o")  # no YOLO labels: said, not raised
    assert any(c[0] == "notify" and "no other labeler's field" in c[1][0] for c in ctx.ops.calls)
    ctx.run(panel, "apply_review")
    assert s["applied"].startswith("curated:") and "1 approved, 1 rejected" in s["applied"]
    curated = set(ds.values("curated.detections.source_id", unwind=True))
    assert entries[0].label_id in curated and entries[1].label_id not in curated
    assert entries[2].label_id not in curated  # still queued, not decided
    # the keys component gets the label on screen and the panel method to call
    rendered = panel.render(ctx)
    assert rendered.to_json()["view"]["name"] == "GridView"  # serializable, as the App gets it
    keys = dict(view_properties(rendered))["keys"]
    assert keys["component"] == "DiffugenReviewKeys" and keys["on_key"] == f"{PLUGIN}/review_panel#on_key"
    assert keys["label_id"] == s["label_id"] and set(keys["keys"]) == set(pp.KEYS)


def view_properties(prop):
    """(name, view JSON) of a rendered panel's top-level properties."""
    return [(name, p.view.to_json()) for name, p in prop.type.properties.items()]


def test_panel_takes_the_other_labelers_labels_and_rethresholds_one_sample(ds, panel):
    ds.clone_sample_field("daam_detections", "yolo_detections")
    _queued(ds)
    ctx = _Ctx(ds).run(panel, "on_load")
    s = ctx.panel_state
    assert s["right_has_image"] and s["right_caption"].startswith("yolo_detections:") and ctx.data["images"]["right"]
    entry = rv.review_queue(ds)[0]
    ctx.run(panel, "on_key", key="o")
    assert ds.select(entry.sample_id).values(rv.CURATED_SOURCE) == ["yolo_detections"]
    ctx.run(panel, "take_own", label_id=entry.label_id)
    assert ds.select(entry.sample_id).values(rv.CURATED_SOURCE) == ["daam_detections"]
    # re-threshold the shown label's sample: the preview writes nothing, then relabel it
    shown = s["label_id"]
    sample_id = next(e.sample_id for e in rv.review_queue(ds) if e.label_id == shown)
    before = _ids(ds.select(sample_id))
    s["heat_threshold"] = 0.9
    ctx.run(panel, "preview_threshold")
    assert "would become" in s["preview"] and _ids(ds.select(sample_id)) == before
    ctx.run(panel, "apply_threshold")
    assert _ids(ds.select(sample_id)) != before
    assert any(c[0] == "notify" and c[1][0].startswith("relabeled with threshold 0.9") for c in ctx.ops.calls)
    s["heat_threshold"] = 1.5
    ctx.run(panel, "preview_threshold")
    assert any(c[0] == "notify" and c[1][0].startswith("threshold:") for c in ctx.ops.calls)


def test_panel_histogram_click_sets_the_threshold_and_rebuilds_the_queue(ds, panel):
    ctx = _Ctx(ds).run(panel, "on_load")  # no queue yet: says so
    assert ctx.panel_state["label_id"] is None and "Nothing is queued" in ctx.panel_state["header"]
    ctx.run(panel, "on_histogram_click", x=0.6)
    assert ctx.panel_state["queue_threshold"] == 0.6
    assert ctx.panel_state["histogram_layout"]["shapes"][0]["x0"] == 0.6
    ctx.run(panel, "rebuild_queue")
    scores = ds.values("daam_detections.detections.confidence", unwind=True)
    assert rv.queue_counts(ds).total == sum(x < 0.6 for x in scores) > 0
    assert ctx.panel_state["label_id"] == rv.review_queue(ds)[0].label_id
    opened = rv.review_queue(ds)[-1]
    ctx.current_sample = opened.sample_id  # a sample opened in the App: its queued labels
    ctx.run(panel, "on_change_current_sample")
    assert ctx.panel_state["label_id"] == pp.first_of_sample(rv.review_queue(ds), opened.sample_id).label_id
