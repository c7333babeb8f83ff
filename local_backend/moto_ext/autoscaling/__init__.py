"""moto extension for Auto Scaling: fleets of enclave hosts (see models).

Instances a group launches from an enclave-enabled launch template get the template version's
EnclaveOptions, metadata options and instance profile, and boot from their user data through
the EC2 extension's `on_instance_start` / `on_instance_stop` hooks.
"""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Patch moto's Auto Scaling models (idempotent)."""
    from . import models

    models.install()
