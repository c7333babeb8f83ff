"""The CLI's one crossing into `local_backend` (docs/ARCHITECTURE.md, "Rooms and arrows").

The CLI is the one place that calls every part; its handlers reach the backend only through
here, each part imported on first use, so `enclavekit lint` and the image commands run without
the backend installed. tests/test_import_rules.py names this module the CLI's gateway and
checks that it imports `local_backend` only inside its functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from local_backend.emulator.runtime import EnclaveManager
    from local_backend.emulator.vsock_proxy import VsockProxy
    from local_backend.verify import VerifyReport


def server() -> ModuleType:
    """`local_backend.server`: start, stop and status of the local endpoint, and its CA."""
    from local_backend import server as module

    return module


def up_loop() -> ModuleType:
    """`local_backend.up`: `up` (the local deploy loop), its phases table, the try-it lines."""
    from local_backend import up as module

    return module


def verify(state_dir: Path, *, stack: str | None, checks: Sequence[str] | None) -> VerifyReport:
    """`enclavekit verify`: every check on every deployed enclave host."""
    from local_backend.verify import verify as run

    return run(state_dir, stack=stack, checks=checks)


def stream_cdk(args: Sequence[str], *, state_dir: Path, on_stderr: Callable[[str], None]) -> int:
    """The project's cdk CLI aimed at the local endpoint, behind the egress guard."""
    from local_backend.cdk import stream_cdk as run

    return run(args, state_dir=state_dir, on_stderr=on_stderr)


def enclave_manager(state_dir: Path | None) -> EnclaveManager:
    """The enclave emulator of `state_dir` (None: $ENCLAVEKIT_STATE_DIR or .enclavekit)."""
    from local_backend.emulator.runtime import EnclaveManager

    return EnclaveManager(state_dir)


def vsock_proxy(
    state_dir: Path | None,
    local_port: int,
    remote_addr: str,
    remote_port: int,
    *,
    config: str | None,
    endpoint: str | None,
    workers: int,
) -> VsockProxy:
    """A vsock-proxy on the emulated parent (CID 3) of `state_dir` (None: as above)."""
    from local_backend.emulator.state import state_dir as resolve
    from local_backend.emulator.vsock_proxy import VsockProxy

    return VsockProxy.for_state_dir(
        resolve(state_dir),
        local_port,
        remote_addr,
        remote_port,
        config=config,
        endpoint=endpoint,
        workers=workers,
    )
