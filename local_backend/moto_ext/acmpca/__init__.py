"""moto extension for AWS Private CA: its CloudFormation types and ACM certificates it issues."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Register the CloudFormation models (defining them registers them) and show a failed
    certificate's reason (idempotent)."""
    from . import models

    models.install_failure_reason()
