"""moto extension for KMS: key policies enforced on every call, attested `Recipient` calls.

See models.py (authorization, attestation) and responses.py (the patches on moto).
"""

from __future__ import annotations

from pathlib import Path

from .models import TRUST


def install(state_dir: Path) -> None:
    """Patch moto's KMS in this process; `state_dir` holds the local PKI (the trust anchor)."""
    from .responses import install as _install

    TRUST.configure(Path(state_dir))
    _install()
