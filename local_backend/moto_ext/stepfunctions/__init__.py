"""moto extension for Step Functions: executions of Lambda-task state machines run (see
models); moto only records them."""

from __future__ import annotations

from pathlib import Path


def install(state_dir: Path) -> None:
    """Run executions on the local Lambda runtime (idempotent)."""
    from . import models

    models.install()
