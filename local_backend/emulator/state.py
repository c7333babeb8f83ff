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
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from enclavekit.errors import InvalidInput

DEFAULT_STATE_DIR = ".enclavekit"
STATE_ENV = "ENCLAVEKIT_STATE_DIR"
PARENT_CID = 3

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
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def new_slot() -> str:
    """16 hex digits like nitro-cli's: milliseconds since the epoch, then 16 random bits."""
    return f"{(int(time.time() * 1000) << 16 | secrets.randbits(16)) & (2**64 - 1):016x}"


class Layout:
    """Paths under one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.enclaves = root / "enclaves"
        self.vsock = root / "vsock"

    def ensure(self) -> None:
        for d in (self.root, self.enclaves, self.vsock, self.vsock / str(PARENT_CID)):
            d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.root, 0o700)

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
