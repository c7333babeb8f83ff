"""Where one instance host's files live, on the machine and inside the host.

    <state>/instances/<iid>/instance.json   what to boot (written by the start hook)
    <state>/instances/<iid>/host.json       the launcher's report: state, boot result, ports
    <state>/instances/<iid>/console.log     the console: cloud-init and user data output
    <state>/instances/<iid>/rootfs/         the host's persistent disk: etc, opt, var, home,
                                            root, srv, mnt and usr-upper (over the machine's /usr)
    <state>/instances/<iid>/mnt/            the mount point the host's root is built on

Inside the host, the tools share a few fixed paths (`HOST_*`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclavekit.contract import INSTANCE_FILE

HOST_FILE = "host.json"
CONSOLE_FILE = "console.log"
# Persistent top-level directories of the host (its "EBS volume").
PERSISTENT_DIRS = ("etc", "opt", "var", "home", "root", "srv", "mnt", "media")
# Inside the host.
HOST_IDENTITY = "/run/enclavekit-host/identity.json"  # instance id, role, region, type
HOST_EMULATOR_STATE = "/run/nitro_enclaves/emulator"  # the enclave emulator's state dir
HOST_ALLOCATION = "/run/nitro_enclaves/allocation.json"  # what the allocator reserved
# The machine's /usr and loader cache, read-only, for the enclave driver's namespace only.
HOST_MACHINE_STAGE = "/run/enclavekit-host/machine"
CLOUD_DIR = "/var/lib/cloud"
BOOT_RESULT = "/var/lib/cloud/data/result.json"  # cloud-init's own result file
BOOT_STATUS = "/var/lib/cloud/data/status.json"
_write_lock = threading.Lock()


@dataclass(frozen=True)
class HostLayout:
    """The files of one instance host on the machine."""

    dir: Path

    @property
    def instance_file(self) -> Path:
        return self.dir / INSTANCE_FILE

    @property
    def host_file(self) -> Path:
        return self.dir / HOST_FILE

    @property
    def console(self) -> Path:
        return self.dir / CONSOLE_FILE

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def mount_point(self) -> Path:
        return self.dir / "mnt"

    def inside(self, path: str) -> Path:
        """The machine path of a file on the host's persistent disk (`/var/...` -> rootfs),
        its links resolved as the host sees them (`confined`): the machine reads and writes
        these files from outside, and root in the host owns them."""
        return confined(self.rootfs, path)

    def read_info(self) -> dict[str, Any]:
        return json.loads(self.instance_file.read_text())

    def read_host(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.host_file.read_text())
        return {}

    def write_host(self, **fields: Any) -> None:
        """Atomically merge `fields` into host.json (the launcher writes from two threads)."""
        with _write_lock:
            current = self.read_host()
            current.update(fields, updated=time.time())
            tmp = self.host_file.with_name(f".{HOST_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.host_file)

    def boot_result(self) -> dict[str, Any] | None:
        """cloud-init's result inside the host, once the user data has run."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.inside(BOOT_RESULT).read_text())
        return None


MAX_LINKS = 40  # the kernel's limit on links followed in one path walk (ELOOP)


def confined(root: Path, path: str) -> Path:
    """`path` under `root` with every link on the way resolved as if `root` were `/` (an
    absolute target restarts at `root`, `..` stops there), like openat2's RESOLVE_IN_ROOT.
    The result has no link left in its existing part, so the machine following it stays on
    the host's disk: a link root in the host planted to `/etc/...` of the machine means the
    host's own `/etc/...`, as it does inside the instance."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, name)
        if not candidate.is_symlink():
            done.append(name)
            continue
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(candidate))
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return root.joinpath(*done)


def instance_layout(state_dir: Path, instance_id: str) -> HostLayout:
    return HostLayout(Path(state_dir) / "instances" / instance_id)
