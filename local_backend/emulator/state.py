"""On-disk state of the enclave emulator: where each enclave's files live and its record.

    <state>/emulator/instance-id        the emulated parent's instance id (stable per state dir)
    <state>/enclaves/<slot>/request.json what run-enclave asked for (written by the manager)
    <state>/enclaves/<slot>/state.json   the nitro-cli record + internals (written by the monitor)
    <state>/enclaves/<slot>/monitor.log  the monitor's own log
    <state>/enclaves/<slot>/console.log  the enclave's stdout/stderr (debug mode only)
    <state>/enclaves/<slot>/nsm.sock     the emulated NSM device channel (/dev/nsm inside)
    <state>/vsock/<cid>/<port>           emulated vsock listeners (parent CID 3)

`<slot>` is the 16 hex digits after `-enc` in the enclave id (short, to keep socket paths short).
Records are replaced atomically (write + rename), so a reader never sees half a file.
Modes: every directory here 0700, records and sockets 0600 (the emulator and the parent run as
one user; other local users get nothing — see docs/ARCHITECTURE.md, emulator threat model).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from enclavekit.contract import DEFAULT_STATE_DIR, ENCLAVES_DIR, PARENT_CID, STATE_ENV, VSOCK_DIR
from enclavekit.errors import InvalidInput

RUNNING = "RUNNING"
TERMINATED = "TERMINATED"
FAILED = "FAILED"
STARTING = "STARTING"


def state_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $ENCLAVEKIT_STATE_DIR, else ./.enclavekit — absolute."""
    chosen = explicit or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    return Path(chosen).absolute()


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: other users get nothing below it.

    The parent (CID 3) and the emulator run as the same user, so 0700 keeps every vsock
    directory reachable by the parent while no other local user can list or connect.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to change (e.g. a shared parent dir)
        os.chmod(path, 0o700)
    return path


def new_slot() -> str:
    """16 hex digits like nitro-cli's: milliseconds since the epoch, then 16 random bits."""
    return f"{(int(time.time() * 1000) << 16 | secrets.randbits(16)) & (2**64 - 1):016x}"


class Layout:
    """Paths under one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.enclaves = root / ENCLAVES_DIR
        self.vsock = root / VSOCK_DIR
        # What the allocator reserved ({"memory_mib": N, "cpu_count": N}), written by whoever
        # plays nitro-enclaves-allocator for this parent; absent: the machine is the pool.
        self.allocator_pool = root / "emulator" / "allocator-pool.json"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.enclaves, self.vsock, self.vsock / str(PARENT_CID)):
            private_dir(d)

    def instance_id(self) -> str:
        """The emulated parent's instance id, created once per state directory."""
        path = self.root / "emulator" / "instance-id"
        if path.is_file():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        iid = "i-" + secrets.token_hex(9)[:17]
        path.write_text(iid + "\n")
        return iid

    def slot_dir(self, slot: str) -> Path:
        return self.enclaves / slot

    def slots(self) -> list[str]:
        if not self.enclaves.is_dir():
            return []
        return sorted(p.name for p in self.enclaves.iterdir() if (p / "request.json").is_file())

    def slot_of(self, enclave_id: str) -> str:
        head, sep, slot = enclave_id.rpartition("-enc")
        if not sep or not head.startswith("i-") or len(slot) != 16:
            raise InvalidInput(
                f"enclave id: expected i-<hex>-enc<16 hex digits>, found {enclave_id!r}"
            )
        if not (self.slot_dir(slot) / "request.json").is_file():
            raise InvalidInput(f"enclave id {enclave_id}: no such enclave in {self.root}")
        return slot


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether `pid` runs (and, with `marker`, its command line mentions it: no pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    return marker is None or marker.encode() in cmdline
