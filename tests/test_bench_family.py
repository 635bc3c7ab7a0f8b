"""The capture bench runs for every model family (its figures and targets live in BENCHMARKS.md, not here).

``bench/bench_capture.py --quick`` times each mode once on the family's tiny pipeline (so the bench
cannot rot while the families change); ``--model-sized --device meta`` builds the model-sized
configs without memory and must give the real models' parameter counts.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_capture():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_capture")
    finally:
        sys.path.remove(str(BENCH))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("model", ["builtin:tiny", "builtin:tiny-sdxl", "builtin:tiny-sd3", "builtin:tiny-flux",
                                   "builtin:tiny-flux2", "builtin:tiny-flux2-dev"])
def test_capture_bench_quick(bench_capture, model, capsys):
    bench_capture.main(["--model", model, "--quick", "--device", "cpu", "--softmax-record"])
    out = capsys.readouterr().out
    assert "warm-up: image max |ours - bare| = 0, |refined - bare| = 0" in out, out
    assert "ours/bare = " in out and "refined/bare = " in out and "target ours/bare <= 1.05" in out, out
    assert "softmax/bare = " in out, out


@pytest.mark.parametrize("model, sized, part, billions", [
    ("builtin:tiny-sdxl", "sdxl-base", "unet", 2.567),
    ("builtin:tiny-sd3", "sd3.5-large", "transformer", 8.057),
    ("builtin:tiny-sd3", "sd3.5-medium", "transformer", 2.243),
    ("builtin:tiny-flux", "flux.1-dev", "transformer", 11.901),
])
def test_model_sized_configs_have_the_real_sizes(bench_capture, model, sized, part, billions, capsys):
    bench_capture.main(["--model", model, "--model-sized", sized, "--device", "meta"])
    out = capsys.readouterr().out
    assert f"{part} {billions:.3f}B" in out, out
