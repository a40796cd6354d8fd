"""Shared pytest fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (FIT-Connect reference material); skips the test when absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"FIT-Connect reference material not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def load_vector(reference_dir: Path) -> Any:
    """Load a JSON file from ``../shared/reference/vectors`` by name."""

    def load(name: str) -> Any:
        path = reference_dir / "vectors" / name
        if not path.is_file():
            pytest.skip(f"reference vector {name} not found at {path}")
        return json.loads(path.read_text(encoding="utf-8"))

    return load


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
