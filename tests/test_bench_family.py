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
    assert "peak memory (torch's CPU allocator, profiler" in out and "target peak memory refined/bare <= 1.10" in out, out


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


@pytest.mark.parametrize("model, depth, billions", [("builtin:tiny-flux", 2, 1.027), ("builtin:tiny-sd3", 2, 0.192)])
def test_depth_keeps_the_widths_with_fewer_blocks(bench_capture, model, depth, billions, capsys):
    """``--depth 2``: FLUX.1 dev's widths with 2 double- and 2 single-stream blocks; SD3.5 Medium's with 2 joint blocks."""
    sized = "flux.1-dev" if "flux" in model else "sd3.5-medium"
    bench_capture.main(["--model", model, "--model-sized", sized, "--depth", str(depth), "--device", "meta"])
    out = capsys.readouterr().out
    assert f"{depth} layers deep" in out and f"transformer {billions:.3f}B" in out, out
    with pytest.raises(SystemExit, match="--depth"):
        bench_capture.main(["--model", "builtin:tiny-sdxl", "--model-sized", "--depth", "2", "--device", "meta"])
