"""moto extension for EC2: EnclaveOptions, emulator start/stop hooks, ACM-for-Nitro-Enclaves
certificate associations, and CloudFormation handlers moto lacks (see models).

The emulator plugs in with `on_instance_start(fn)` / `on_instance_stop(fn)`; `fn` receives an
`EnclaveInstance`.
"""

from __future__ import annotations

from pathlib import Path

from .models import EnclaveInstance, on_instance_start, on_instance_stop

__all__ = ["EnclaveInstance", "install", "on_instance_start", "on_instance_stop"]


def install(state_dir: Path) -> None:
    """Patch moto's EC2 models and wire handlers (idempotent)."""
    from . import models, responses

    models.install()
    responses.install()
