"""The refinement on a pooled token grid, judged where the truth is known: the toy MMDiT.

A transformer's token grid over 32×32 (SD3 and FLUX from 768² on) is refined on 2×2 block means of its queries
and keys (``HeatmapCollector.record_self``). The toy MMDiT's grid is 16×16, so to judge the pooling on it this runs
``bench/label_accuracy.py`` with the limit lowered: ``--max-positions 64`` pools its grid by 2 onto 8×8, as a 1024²
FLUX or SD3 image's 64×64 grid is pooled onto 32×32. Every other argument goes to the bench::

    python -m studies.pooled_refinement --max-positions 64 --model builtin:toyworld-mmdit --n 60 --children 0 --yolo-train 0
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import diffugen.generation.attention as attention

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-positions", type=int, default=attention.MAX_SELF_POSITIONS,
                    help="the self-attention grid's limit (the product's: 1024)")
    a, rest = ap.parse_known_args(argv)
    attention.MAX_SELF_POSITIONS = a.max_positions  # read at each call, so the bench's runs pool by it
    sys.argv = [str(ROOT / "bench" / "label_accuracy.py"), *rest]
    sys.path.insert(0, str(ROOT / "bench"))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
