"""moto extension for ACM: certificates issued at once by a local CA (see models)."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Load/create the local CA under `<state>/acm-ca/` and patch RequestCertificate."""
    from . import models

    models.install(state_dir)
