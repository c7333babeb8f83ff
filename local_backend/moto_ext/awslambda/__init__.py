"""moto extension for Lambda: functions run on the local runtime (subprocesses, no Docker).

`Invoke` and CloudFormation custom resources both go through `runtime.invoke`; see runtime.py.
"""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Point moto's invoke at the local runtime (idempotent)."""
    from . import models, runtime

    runtime.configure(state_dir)
    models.install()
