"""moto extension for cloudformation (not written yet)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's cloudformation backend (nothing yet)."""
