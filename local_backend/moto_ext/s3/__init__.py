"""moto extension for s3 (not written yet)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's s3 backend (nothing yet)."""
