"""The plugin in the real FiftyOne App: headless Chromium opens the operator browser and runs label_daam,
and reviews labels in the DiffuGen review panel with the keyboard.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and ``pip install playwright``;
skipped otherwise. Screenshots go to ``tests/artifacts/``.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium", allow_module_level=True)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    pytest.skip("playwright is not installed: pip install playwright (no `playwright install` needed)",
                allow_module_level=True)

import fiftyone as fo  # noqa: E402
from conftest import small_config  # noqa: E402

from diffugen.config import parse_config  # noqa: E402
from diffugen.curation.review import APPROVED, REJECTED, build_review_queue, review_queue  # noqa: E402
from diffugen.generation.runner import generate  # noqa: E402
from diffugen.plugin.install import install_plugin  # noqa: E402

pytestmark = pytest.mark.slow  # a real browser and the App server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


@pytest.fixture
def app(tmp_path, dataset_name):
    """A generated dataset served by the FiftyOne App (its own server process, our plugins folder)."""
    generate(parse_config(small_config(dataset_name, tmp_path / "out", seeds=[11])))
    plugins = tmp_path / "plugins"
    install_plugin(plugins)
    fo.list_datasets()  # connected: the server inherits the running database's port from the environment
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"],
                              env=dict(os.environ, FIFTYONE_PLUGINS_DIR=str(plugins)), stdout=log, stderr=subprocess.STDOUT)

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/fiftyone", timeout=2).status == 200
        except OSError:
            return server.poll() is not None  # died: stop waiting, the assert below says so

    try:
        _wait_until(up, 60, "the App server")
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        yield f"http://127.0.0.1:{port}", fo.load_dataset(dataset_name)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@contextlib.contextmanager
def _app_page(url: str, dataset_name: str):
    """Headless Chromium on the App's page of ``dataset_name``, the grid shown and the pop-up dismissed."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, timeout=30_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{url}/datasets/{dataset_name}", wait_until="load")
            page.get_by_text("Samples", exact=True).first.wait_for()
            dismiss = page.get_by_text("Dismiss", exact=True)
            try:  # the "Explore Enterprise" pop-up, when it shows
                dismiss.click(timeout=8_000)
            except Exception:
                pass
            yield page
        finally:
            browser.close()


def test_label_daam_from_the_operator_browser(app, tmp_path):
    url, ds = app
    before = sorted(ds.values("daam_detections.detections.id", unwind=True))
    with _app_page(url, ds.name) as page:
        # the operator browser opens with the backtick key
        page.keyboard.press("`")
        page.keyboard.type("relabel")
        page.get_by_text("DiffuGen: relabel from DAAM heatmaps").wait_for()
        page.keyboard.press("Enter")
        page.get_by_text("Relabel from DAAM heatmaps", exact=True).wait_for()
        # a fixed threshold: a bad value is flagged on the field, the preview writes nothing, then execute
        page.get_by_label("fixed threshold").check()
        threshold = page.locator("input[type=number]").first  # the form's first number: the threshold
        expect(threshold).to_have_value("0.5")
        threshold.fill("1.5")
        expect(page.get_by_text("Threshold must be in (0, 1), got 1.5")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "label_daam_invalid.png"))
        threshold.fill("0.9")
        page.get_by_label("Preview only").check()
        page.get_by_text("labels now →").wait_for()
        page.screenshot(path=str(ARTIFACTS / "label_daam_preview.png"))
        assert sorted(ds.values("daam_detections.detections.id", unwind=True)) == before
        page.get_by_label("Preview only").uncheck()
        page.get_by_role("button", name="Execute", exact=True).click()

        def relabeled():
            ds.reload()
            return (ds.info.get("diffugen_label_params") or {}).get("threshold") == 0.9

        _wait_until(relabeled, 60, "label_daam to write the dataset")
        time.sleep(1)  # let the App reload the grid for the screenshot
        page.screenshot(path=str(ARTIFACTS / "label_daam_done.png"))
    after = sorted(ds.values("daam_detections.detections.id", unwind=True))
    assert after and after != before


def test_review_panel_decides_with_the_keyboard_and_applies_the_review(app):
    url, ds = app
    ds.clone_sample_field("daam_detections", "yolo_detections")  # a second labeler, shown beside DAAM
    scores = sorted(ds.values("daam_detections.detections.confidence", unwind=True))
    assert len(scores) >= 3 and scores[2] < 1
    queued = build_review_queue(ds, min_score=scores[2] + 1e-6)  # the three lowest (at least)
    first, second, third = review_queue(ds)[:3]
    with _app_page(url, ds.name) as page:
        page.locator("[data-cy=new-panel-btn]").first.click()  # the "+" beside the Samples tab
        page.get_by_text("DiffuGen review", exact=True).first.click()
        page.get_by_text(f"{queued} left of {queued}").wait_for()
        page.get_by_text(f"Label 1 of {queued}").wait_for()
        page.get_by_text("yolo_detections:").wait_for()  # the other labeler's picture beside DAAM's
        page.keyboard.press("1")  # the first class word's heatmap
        page.get_by_text("heatmap of").wait_for()
        page.screenshot(path=str(ARTIFACTS / "review_panel_heatmap.png"))
        page.keyboard.press("0")  # back to the labels
        expect(page.get_by_text("heatmap of")).to_have_count(0)
        page.keyboard.press("a")  # approve label 1; the panel moves on to label 2
        page.get_by_text(f"{queued - 1} left of {queued}").wait_for()
        page.get_by_text(f"Label 2 of {queued}").wait_for()
        page.keyboard.press("r")  # reject label 2
        page.get_by_text(f"{queued - 2} left of {queued}").wait_for()
        page.screenshot(path=str(ARTIFACTS / "review_panel_decided.png"))
        apply = page.get_by_role("button", name="Apply review")
        apply.focus()  # buttons take the focus (Tab) and Enter presses them
        page.keyboard.press("Enter")
        page.get_by_text("curated:").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "review_panel_applied.png"))
    ds.reload()

    def tags(label_id):
        return set(ds.select_labels(ids=[label_id], fields="daam_detections").count_label_tags())

    assert APPROVED in tags(first.label_id) and REJECTED in tags(second.label_id)
    assert not {APPROVED, REJECTED} & tags(third.label_id)
    curated = set(ds.values("curated.detections.source_id", unwind=True))
    assert first.label_id in curated  # approved, whatever its score
    assert second.label_id not in curated and third.label_id not in curated  # rejected; still queued
    assert ds.info["diffugen_reviews"][-1]["action"] == "apply_review"
