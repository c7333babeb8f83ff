"""Imported at start-up by every Python run in an instance host (this directory is on the host's
PYTHONPATH): `python3.11 -m venv DIR` and `DIR/bin/pip install --no-cache-dir ...` get their
prepared result when one was kept for exactly that command and state
(`local_backend.host.prepared`); everything else starts as it would without this file."""

import os
import sys


def _enclavekit_prepared() -> None:
    argv = getattr(sys, "orig_argv", [])
    if len(argv) < 3:
        return
    venv = argv[1:3] == ["-m", "venv"]
    pip = os.path.basename(argv[1]) in ("pip", "pip3", "pip3.11") and argv[2] == "install"
    if not (venv or pip):
        return
    try:
        from local_backend.host import prepared

        kind = prepared.form(argv, sys.prefix, sys.base_prefix)
        if kind is not None:
            prepared.hook(kind)
    except Exception:  # noqa: BLE001 - no prepared result: the command runs as it is
        return


_enclavekit_prepared()
