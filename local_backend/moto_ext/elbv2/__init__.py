"""moto extension for ELBv2: CloudFormation load balancers keep their Type (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's ELBv2 CloudFormation models (idempotent)."""
    from . import models

    models.install()
