"""moto extension for CloudFormation: change sets as the cdk CLI drives them, no silently
skipped resource types, rollback of failed creates, outputs after execution (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's CloudFormation engine and wire handlers (idempotent)."""
    from . import models, responses

    models.install()
    responses.install()
