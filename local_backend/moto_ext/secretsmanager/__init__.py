"""moto extension for Secrets Manager: `AWS::SecretsManager::Secret` in templates (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Register the CloudFormation model (idempotent: defining it registers it)."""
    from . import models  # noqa: F401
