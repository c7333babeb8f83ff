"""moto extension for ECR: repositories and tokens that name the endpoint's own image registry
(local_backend.registry) on loopback, and images as ECR records them (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's ECR models and responses (idempotent)."""
    from . import models, responses

    models.install(state_dir)
    responses.install()
