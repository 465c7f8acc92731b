"""Shared fixtures: the reference files beside the repository (``../shared``), the CLI binary.

Under ``CI=true`` a missing ``../shared`` folder or CLI binary is a failure, elsewhere a skip
with a message (the Rust tests' rule)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELLFATE_SHARED", ROOT.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        msg = f"{what} not found at {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def pancreas_path():
    return _need(SHARED / "reference" / "pancreas_3696" / "reference.h5ad", "the pancreas reference")


@pytest.fixture(scope="session")
def dentate_paths():
    ref = _need(SHARED / "reference" / "dentategyrus_200" / "reference.h5ad", "the dentate gyrus reference")
    data = _need(SHARED / "data" / "dentategyrus_cellrank_gt" / "adata_200.h5ad", "the dentate gyrus input")
    return ref, data


@pytest.fixture(scope="session")
def cli():
    """The ``cellfate`` binary that ``cargo test`` built (or ``CELLFATE_BIN``)."""
    given = os.environ.get("CELLFATE_BIN")
    candidates = [Path(given)] if given else [ROOT / "target" / "debug" / "cellfate", ROOT / "target" / "release" / "cellfate"]
    for c in candidates:
        if c.exists():
            return c
    return _need(candidates[0], "the cellfate binary (cargo build)")


def pytest_configure(config):
    # The reference files were written by older anndata versions; their format warnings are
    # not about cellfate.
    config.addinivalue_line("filterwarnings", "ignore:Element .* was written without encoding metadata")


@pytest.fixture(scope="session")
def cellrank_python():
    """CellRank 2.3.3's interpreter (``.venv-cellrank``, made by scripts/setup.sh under CI=true
    or with CELLFATE_CELLRANK=1)."""
    return _need(ROOT / ".venv-cellrank" / "bin" / "python", "CellRank 2.3.3's venv (.venv-cellrank)")
