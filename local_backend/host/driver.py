"""The host's Nitro Enclaves "driver": the one process in a host allowed to build enclaves.

On a Nitro parent, nitro-cli asks the kernel driver (/dev/nitro_enclaves) to carve out an
enclave; root in the instance cannot do what the driver does. Here the same split keeps the
sandbox whole: PID 1 forks this process *before* it drops CAP_SYS_ADMIN for everything else it
runs (user data, services), so the user data's root cannot mount, remount the read-only binds
(the project, /sys) writable, or build namespaces — and only this process, holding the
capability, starts the emulator's enclaves (whose isolation needs it). `nitro-cli run-enclave`
sends its arguments here over `/run/nitro_enclaves/driver.sock` (0600) and gets nitro-cli's
answer back; describe/terminate/console read the emulator's files directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from local_backend.host.layout import HOST_EMULATOR_STATE, HOST_MACHINE_STAGE

SOCKET = "/run/nitro_enclaves/driver.sock"
MAX_REQUEST = 64 * 1024
_lock = threading.Lock()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        from enclavekit.errors import EnclaveKitError
        from local_backend.emulator.runtime import EnclaveManager

        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST))
            kwargs: dict[str, Any] = dict(request["run_enclave"])
            # What the hardware says, never the caller: PCR3/PCR4 come from the instance's own
            # role and id, and the instance type bounds the enclave (as the Nitro driver does).
            kwargs["parent_role_arn"] = (_identity.get("role_arns") or [None])[0]
            kwargs["parent_instance_id"] = _identity.get("instance_id")
            _check_type_limits(kwargs)
            with _lock:
                _ensure_pki()
            result = EnclaveManager(HOST_EMULATOR_STATE).run_enclave(**kwargs)
            reply: dict[str, Any] = {"ok": result}
        except EnclaveKitError as exc:
            reply = {"error": str(exc), "exit_code": exc.exit_code}
        except Exception as exc:  # noqa: BLE001 - the caller prints it, the driver goes on
            reply = {"error": f"{type(exc).__name__}: {exc}", "exit_code": 1}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


PKI_DIR = f"{HOST_EMULATOR_STATE}/pki"
_launcher: dict[str, Any] = {}


def _private_pki() -> None:
    """The driver's own mount namespace with a private tmpfs at the emulator's pki dir: the
    local PKI's keys (which sign attestation documents) exist only there, for the driver and
    the enclave monitors it starts. Root in the user data sees an empty directory, cannot
    setns (no CAP_SYS_ADMIN) and cannot read /proc/<driver>/root (the driver holds
    capabilities it lacks, so ptrace access is refused)."""
    from local_backend.emulator import isolation as iso

    os.makedirs(PKI_DIR, exist_ok=True)
    iso.unshare(iso.CLONE_NEWNS)
    iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
    _machine_code()
    iso.mount(
        "enclave-pki",
        PKI_DIR,
        "tmpfs",
        iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC,
        "mode=0700,size=1m",
    )


def _machine_code() -> None:
    """In the driver's namespace /usr/lib and /usr/lib64 are the machine's, read-only: the
    driver, the monitors it starts (which hold the PKI keys) and their enclaves' runtime layer
    load shared libraries from there, and in the host root may rewrite them (/usr is an
    overlay of its own). The rest of /usr stays the host's: an EIF a package installed under
    /usr/share is data, measured before it runs. The loader's /etc files are the machine's for
    the whole host (`sandbox.build_root`)."""
    from local_backend.emulator import isolation as iso

    for lib in ("lib", "lib64"):
        stage = Path(HOST_MACHINE_STAGE) / "usr" / lib
        target = Path("/usr") / lib
        if stage.is_dir() and not stage.is_symlink() and target.is_dir():
            iso.bind_ro(str(stage), str(target))


def _ensure_pki() -> None:
    """Fetch the endpoint's PKI from the launcher on the first enclave."""
    if os.path.exists(os.path.join(PKI_DIR, "root.pem")) or "file" not in _launcher:
        return
    f = _launcher["file"]
    f.write(b"pki\n")
    f.flush()
    files = json.loads(f.readline())
    for name, content in files.items():
        path = os.path.join(PKI_DIR, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(content)


_identity: dict[str, Any] = {}


def _check_type_limits(kwargs: dict[str, Any]) -> None:
    """The instance type's bounds (CPU 0's core and the parent's memory stay with the parent)."""
    from enclavekit import instance_types
    from enclavekit.errors import InvalidInput

    if not _identity.get("enclave_enabled", True):
        raise InvalidInput(
            "run-enclave: this instance has no Nitro Enclaves support "
            "(EnclaveOptions.Enabled is false): /dev/nitro_enclaves is absent"
        )
    t = instance_types.lookup(str(_identity.get("instance_type")))
    cpus, mem = kwargs.get("cpu_count"), kwargs.get("memory_mib")
    if isinstance(cpus, int) and cpus > instance_types.max_enclave_cpus(t):
        raise InvalidInput(
            f"[ E22 ] Insufficient CPUs available in the pool. User provided "
            f"`cpu-count` is {cpus}, which is more than {t.name} can give."
        )
    if isinstance(mem, int) and mem > instance_types.max_enclave_memory_mib(t):
        raise InvalidInput(
            f"[ E27 ] Insufficient memory available. User provided `memory` is "
            f"{mem} MB, which is more than {t.name} can give."
        )


def serve(path: str = SOCKET, launcher_fd: int = -1) -> None:
    """Serve run-enclave requests forever (in the forked driver process)."""
    from local_backend.host.layout import HOST_IDENTITY

    # Read once, before any user data runs (the file itself is writable by root in the host).
    _identity.update(json.loads(Path(HOST_IDENTITY).read_text()))
    _private_pki()
    if launcher_fd >= 0:
        os.set_inheritable(launcher_fd, False)
        sock = socket.socket(fileno=launcher_fd)
        _launcher["file"] = sock.makefile("rwb")
        _launcher["sock"] = sock
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = _Server(path, _Handler)
    finally:
        os.umask(old)
    # Bound first (PID 1 waits for the socket), then the emulator's import, before requests.
    from local_backend.emulator import runtime  # noqa: F401

    server.serve_forever()


def run_enclave(kwargs: dict[str, Any], path: str = SOCKET) -> dict[str, Any]:
    """nitro-cli's side: ask the driver to start an enclave; the reply as a dict."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"run_enclave": kwargs}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b'{"error": "the driver closed the connection", "exit_code": 1}')
