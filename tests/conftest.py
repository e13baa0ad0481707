"""Shared fixtures: the committed real sample (assets/sample) and the DICOM variant factory.

Tests must pass on a fresh clone without ../shared, so everything here reads assets/sample only.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample"


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory):
    """Exported graphs, the worklist store and site profiles of a test run stay in its temporary
    folder, never in the user's home (subprocesses inherit the environment)."""
    import os
    base = tmp_path_factory.mktemp("caches")
    keep = {k: os.environ.get(k) for k in ("CXR_CACHE_DIR", "CXR_STORE_DIR", "CXR_PROFILES_DIR")}
    os.environ.setdefault("CXR_CACHE_DIR", str(base / "exported"))
    os.environ.setdefault("CXR_STORE_DIR", str(base / "store"))
    os.environ.setdefault("CXR_PROFILES_DIR", str(base / "profiles"))
    yield
    for k, v in keep.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _import_factory():
    # tests/ is on sys.path under pytest's default "prepend" import mode; "tests." if it is a package.
    try:
        return importlib.import_module("dicom_factory")
    except ImportError:
        return importlib.import_module("tests.dicom_factory")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def kermany_jpegs() -> list[Path]:
    """The 12 committed Kermany JPEGs (6 NORMAL, 6 PNEUMONIA)."""
    paths = sorted((SAMPLE / "kermany").glob("*/*.jpeg"))
    assert len(paths) == 12, f"expected 12 sample JPEGs under {SAMPLE / 'kermany'}, found {len(paths)}"
    return paths


@pytest.fixture(scope="session")
def real_dicoms() -> dict[str, Path]:
    """The two committed real chest DICOMs, by file name."""
    return {p.name: p for p in sorted((SAMPLE / "dicom").glob("*.dcm"))}


@pytest.fixture(scope="session")
def xray(kermany_jpegs) -> np.ndarray:
    """A real radiograph as uint8 gray (224 x 224), the source of every written variant."""
    path = SAMPLE / "kermany" / "NORMAL" / "IM-0115-0001.jpeg"
    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="session")
def xray_wide(xray) -> np.ndarray:
    """A non-square crop (224 rows x 160 columns), to see rotations in the shape."""
    return np.ascontiguousarray(xray[:, 32:192])


@pytest.fixture(scope="session")
def dcm():
    """The DICOM variant writers (tests/dicom_factory.py)."""
    return _import_factory()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser), one per test module."""
    from playwright.sync_api import sync_playwright

    from browser_helpers import CHROMIUM, CHROMIUM_ARGS
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
