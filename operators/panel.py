"""The DiffuGen review panel (``@diffugen/diffugen/review_panel``): the review queue, one label at a time.

A thin panel over :mod:`diffugen.curation.review` (the library the ``review``/``apply_review``
operators and the CLI call) and :mod:`diffugen.plugin.panel` (its keys, cursor and pictures).
It shows the label under review on its image (the queue's field, e.g. DAAM) beside the other
labeler's labels (YOLO, when there are some), a class word's heatmap a click or a key away, the
label's score and why it is doubtful; approve, reject, take the other labeler's labels for the
sample or re-threshold the sample (preview first); a per-class score histogram to rebuild the queue
at another threshold; "apply review" writes ``curated``. Keys: ``operators/review_keys.js``.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from diffugen.curation import review as rv
from diffugen.errors import DiffuGenError
from diffugen.plugin import panel as pp

HELP = f"""Review the labels queued by the `review` operator (or `diffugen review`), one at a time.

{pp.KEY_HELP} (while the panel is shown and no text field has the focus); every button is also
reachable with Tab and pressed with Enter or Space.

*Apply review* writes the `curated` field from the decisions, as the `apply_review` operator does."""


class ReviewPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="review_panel", label="DiffuGen review", icon="rate_review", surfaces="grid",
                               help_markdown=HELP)

    # ---- lifecycle -------------------------------------------------------------------------------
    def on_load(self, ctx):
        self._refresh(ctx, ctx.panel.state.label_id, histogram=True)

    def on_change_dataset(self, ctx):
        ctx.panel.state.set({"label_id": None, "preview": None, "applied": None})
        self._refresh(ctx, None, histogram=True)

    def on_change_current_sample(self, ctx):
        """A sample opened in the App: review its queued labels."""
        if ctx.dataset is None or not ctx.current_sample:
            return
        entry = pp.first_of_sample(rv.review_queue(ctx.dataset), ctx.current_sample)
        if entry is not None:
            self._refresh(ctx, entry.label_id)

    # ---- decisions -------------------------------------------------------------------------------
    def approve(self, ctx):
        self._decide(ctx, rv.APPROVED)

    def reject(self, ctx):
        self._decide(ctx, rv.REJECTED)

    def undo(self, ctx):
        self._decide(ctx, None)

    def _decide(self, ctx, decision):
        label_id = self._label_id(ctx)
        if label_id is None or not self._call(ctx, rv.decide_label, ctx.dataset, label_id, decision):
            return
        entries = rv.review_queue(ctx.dataset)
        shown = (pp.step(entries, label_id) if decision is not None else None) or pp.current_entry(entries, label_id)
        self._refresh(ctx, shown.label_id if shown else None, entries=entries)
        ctx.ops.reload_samples()  # the label tags in the grid

    def next(self, ctx):
        self._move(ctx, forward=True)

    def previous(self, ctx):
        self._move(ctx, forward=False)

    def _move(self, ctx, forward: bool):
        entries = rv.review_queue(ctx.dataset)
        entry = pp.step(entries, self._label_id(ctx), forward, undecided_only=False)
        self._refresh(ctx, entry.label_id if entry else None, entries=entries)

    def take_other(self, ctx):
        entry = self._entry(ctx)
        if entry is None:
            return
        one = ctx.dataset.select(entry.sample_id)
        if self._call(ctx, rv.take_other_labels, one):
            ctx.ops.notify("this sample takes the other labeler's labels", variant="success")
            self._after_sample_change(ctx, entry)

    def take_own(self, ctx):
        """Undo :meth:`take_other`: the sample's curated labels come from the queue's field again."""
        entry = self._entry(ctx)
        if entry is None:
            return
        s = rv.queue_settings(ctx.dataset)
        if self._call(ctx, rv.take_labels, ctx.dataset.select(entry.sample_id), s.field, min_score=s.min_score):
            self._refresh(ctx, entry.label_id)

    # ---- re-threshold this sample ----------------------------------------------------------------
    def preview_threshold(self, ctx):
        from diffugen.labels.relabel import preview_relabel

        entry, params = self._rethreshold(ctx)
        if entry is None:
            return
        p = self._call(ctx, preview_relabel, ctx.dataset.select(entry.sample_id), params)
        if p:
            ctx.panel.state.preview = (f"threshold {params.threshold}: this sample's {p.labels_before} DAAM labels "
                                       f"would become {p.labels_after} (nothing written yet)")

    def apply_threshold(self, ctx):
        entry, params = self._rethreshold(ctx)
        if entry is None:
            return
        queued = self._call(ctx, rv.relabel_for_review, ctx.dataset.select(entry.sample_id), params)
        if queued is not None:
            ctx.ops.notify(f"relabeled with threshold {params.threshold}: {queued} of its labels queued", variant="success")
            self._after_sample_change(ctx, entry, histogram=True)

    def _rethreshold(self, ctx):
        entry = self._entry(ctx)
        if entry is None:
            return None, None
        sample = ctx.dataset.select(entry.sample_id).select_fields("daam_params").first()
        stored = sample["daam_params"].to_dict() if sample["daam_params"] is not None else None
        try:
            return entry, pp.rethreshold_params(stored, ctx.panel.state.heat_threshold)
        except ValueError as err:
            ctx.ops.notify(f"threshold: {err}", variant="error")
            return None, None

    # ---- the whole queue ---------------------------------------------------------------------------
    def on_histogram_click(self, ctx):
        x = ctx.params.get("x")
        if isinstance(x, (int, float)):
            ctx.panel.state.queue_threshold = round(float(x), 2)
            self._refresh(ctx, self._label_id(ctx), histogram=True)

    def rebuild_queue(self, ctx):
        s = rv.queue_settings(ctx.dataset)
        threshold = ctx.panel.state.queue_threshold
        threshold = s.min_score if threshold is None else threshold
        n = self._call(ctx, rv.build_review_queue, ctx.dataset, field=s.field, min_score=threshold,
                       include_unmatched=s.include_unmatched)
        if n is not None:
            ctx.ops.notify(f"{n} labels queued for review (score below {threshold})", variant="success")
            self._refresh(ctx, None, histogram=True)
            ctx.ops.reload_samples()

    def apply_review(self, ctx):
        s = rv.queue_settings(ctx.dataset)
        summary = self._call(ctx, rv.apply_review, ctx.dataset, field=s.field, min_score=s.min_score)
        if summary is not None:
            text = (f"curated: {summary.labels} labels on {summary.samples} samples "
                    f"({summary.approved} approved, {summary.rejected} rejected)")
            ctx.panel.state.applied = text
            ctx.ops.notify(text, variant="success")
            ctx.ops.reload_dataset()

    def show_queue(self, ctx):
        ctx.ops.set_view(name=rv.REVIEW_VIEW)

    def open_sample(self, ctx):
        entry = self._entry(ctx)
        if entry is not None:
            ctx.ops.open_sample(id=entry.sample_id)

    # ---- what is shown -----------------------------------------------------------------------------
    def show_labels(self, ctx):
        ctx.panel.state.heatmap = 0
        self._refresh(ctx, self._label_id(ctx))

    def show_heatmap(self, ctx):
        word = ctx.params.get("word")
        if word is None and str(ctx.params.get("key", "")).isdigit():
            word = int(ctx.params["key"])
        ctx.panel.state.heatmap = int(word or 0)
        self._refresh(ctx, self._label_id(ctx))

    def on_key(self, ctx):
        """A key from ``review_keys.js``: the action :data:`diffugen.plugin.panel.KEYS` names."""
        action = pp.KEYS.get(ctx.params.get("key"))
        if action is not None:
            getattr(self, action)(ctx)

    def render(self, ctx):
        s = ctx.panel.state
        panel = types.Object()
        panel.view("keys", types.View(component="DiffugenReviewKeys", on_key=self.on_key, keys=list(pp.KEYS),
                                      label_id=s.label_id, caption=pp.KEY_HELP))
        panel.md(s.header or "Loading the review queue...", name="header")
        done = panel.h_stack("done", gap=1)
        done.btn("apply_review", label="Apply review", on_click=self.apply_review, variant="contained")
        done.btn("show_queue", label="Show the queue in the grid", on_click=self.show_queue)
        if s.applied:
            panel.view("applied", types.Notice(label=s.applied))
        if s.label_id is not None:
            self._render_label(panel, s)
        panel.plot("histogram", on_click=self.on_histogram_click, layout=s.histogram_layout or {})
        panel.float("queue_threshold", min=0, max=1, view=types.SliderView(
            label="Queue threshold (a click on a bar sets it)", label_position="top", view_multiple_of=0.01,
            value_precision=2, value_label_display="auto"))
        panel.btn("rebuild_queue", label="Rebuild the queue at this threshold", on_click=self.rebuild_queue)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, align_x="left"))

    def _render_label(self, panel, s):
        params = {"label_id": s.label_id}
        panel.md(s.label_text or "", name="label_text")
        decide = panel.h_stack("decide", gap=1)
        decide.btn("approve", label="Approve (a)", on_click=self.approve, params=params, variant="contained")
        decide.btn("reject", label="Reject (r)", on_click=self.reject, params=params, variant="contained")
        decide.btn("undo", label="Undo (u)", on_click=self.undo, params=params)
        if s.other_field and s.taken_other:
            decide.btn("take_own", label=f"Use {rv.source_name(s.field)} labels again", on_click=self.take_own,
                       params=params)
        elif s.other_field:
            decide.btn("take_other", label=f"Take {rv.source_name(s.other_field)} labels (o)",
                       on_click=self.take_other, params=params)
        move = panel.h_stack("move", gap=1)
        move.btn("previous", label="Previous (p)", on_click=self.previous, params=params)
        move.btn("next", label="Next (n)", on_click=self.next, params=params)
        move.btn("open_sample", label="Open the sample", on_click=self.open_sample, params=params)
        words = panel.h_stack("words", gap=1)
        words.btn("show_labels", label="0 labels", on_click=self.show_labels, params=params,
                  variant="contained" if not s.heatmap else "outlined")
        for i, word in enumerate(s.words or [], start=1):
            words.btn(f"heatmap_{i}", label=f"{i} heatmap: {word}", on_click=self.show_heatmap,
                      params={**params, "word": i}, variant="contained" if s.heatmap == i else "outlined")
        images = panel.h_stack("images", gap=2)
        images.view("left", types.ImageView(alt=s.left_caption, width="100%", space=6), label=s.left_caption)
        if s.right_has_image:
            images.view("right", types.ImageView(alt=s.right_caption, width="100%", space=6), label=s.right_caption)
        else:
            images.view("right_note", types.Notice(label=s.right_caption or "", space=6))
        panel.float("heat_threshold", min=0, max=0.95, view=types.SliderView(
            label="Re-threshold this sample's heatmaps (0: Otsu)", label_position="top", view_multiple_of=0.05,
            value_precision=2, value_label_display="auto"))
        thr = panel.h_stack("rethreshold", gap=1)
        thr.btn("preview_threshold", label="Preview", on_click=self.preview_threshold, params=params)
        thr.btn("apply_threshold", label="Relabel this sample", on_click=self.apply_threshold, params=params)
        if s.preview:
            panel.view("preview", types.Notice(label=s.preview))

    # ---- helpers -----------------------------------------------------------------------------------
    def _call(self, ctx, fn, *args, **kwargs):
        """``fn(...)``, or ``None`` and the error as a notification (a DiffuGen error is not a crash)."""
        try:
            result = fn(*args, **kwargs)
        except DiffuGenError as err:
            ctx.ops.notify(str(err), variant="error")
            return None
        return True if result is None else result

    def _label_id(self, ctx):
        return ctx.params.get("label_id") or ctx.panel.state.label_id

    def _entry(self, ctx):
        entries = rv.review_queue(ctx.dataset)
        return next((e for e in entries if e.label_id == self._label_id(ctx)), None)

    def _after_sample_change(self, ctx, entry, histogram=False):
        entries = rv.review_queue(ctx.dataset)
        following = pp.first_of_sample(entries, entry.sample_id)
        if following is None or following.decision is not None:
            following = pp.step(entries, entry.label_id) or following
        self._refresh(ctx, following.label_id if following else None, entries=entries, histogram=histogram)
        ctx.ops.reload_samples()

    def _refresh(self, ctx, label_id, entries=None, histogram=False):
        """Put the queue's state and the current label's pictures into the panel."""
        if ctx.dataset is None:
            ctx.panel.state.set({"header": "Open a dataset made by DiffuGen.", "label_id": None})
            return
        s = rv.queue_settings(ctx.dataset)
        if s.field not in ctx.dataset.get_field_schema():
            ctx.panel.state.set({"header": f"This dataset has no {s.field!r} field: it was not made by DiffuGen.",
                                 "label_id": None})
            return
        entries = rv.review_queue(ctx.dataset) if entries is None else entries
        if label_id != ctx.panel.state.label_id:
            ctx.panel.state.preview = None  # another label: the re-threshold preview was of another sample
        ctx.panel.state.applied = None  # the last "apply review" is out of date
        view = pp.panel_view(ctx.dataset, entries, label_id, s, ctx.panel.state.heatmap or 0)
        if histogram or ctx.panel.state.histogram_layout is None:
            threshold = ctx.panel.state.queue_threshold
            data, layout = pp.histogram_plot(rv.score_histograms(ctx.dataset, s.field),
                                             s.min_score if threshold is None else threshold)
            ctx.panel.data.histogram = data
            view.state["histogram_layout"] = layout
            if threshold is None:
                view.state["queue_threshold"] = s.min_score
        ctx.panel.state.set(view.state)
        ctx.panel.data.set(view.data)
