"""moto extension for ec2 (not written yet)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's ec2 backend (nothing yet)."""
