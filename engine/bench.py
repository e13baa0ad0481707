"""``python -m engine.bench``: the inference benchmark, which lives in ``benchmarks/inference.py``.

Kept as an entry point so that the documented command keeps working; the benchmark itself is
outside the product packages (nothing in ``engine`` imports it).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    runpy.run_module("benchmarks.inference", run_name="__main__", alter_sys=True)
