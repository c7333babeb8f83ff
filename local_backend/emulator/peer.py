"""Who is at the other end of an emulated device channel, and is it the enclave?

On Nitro the NSM is reachable only from inside the enclave. In the emulator it is a Unix socket
on the host, so the server must ask the kernel who connected (SO_PEERCRED: pid, uid, gid, taken
at connect() time and not forgeable by the peer) and decide whether that process belongs to the
enclave. The test, most robust first:

- PID namespace: the peer's `/proc/<pid>/ns/pid` is the enclave's. A host process cannot be in
  it without CAP_SYS_ADMIN + setns (root, which can also ptrace the enclave: out of scope);
- ancestry (when the enclave did not get its own PID namespace): the enclave's init is the peer
  or one of its ancestors.

Where the kernel offers SO_PEERPIDFD (Linux 6.5+), the peer is pinned by a pidfd, and after the
/proc reads the pidfd must still name a live process, so a recycled pid cannot pass as the peer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """The kernel's account of a Unix socket peer (pid as seen from our PID namespace)."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid}"


def peer_of(sock: socket.socket) -> Peer:
    """SO_PEERCRED of a connected Unix socket."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid)


def _pidns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise OSError(f"/proc/{pid}/status has no Uid line")


@contextlib.contextmanager
def _pinned(sock: socket.socket):  # noqa: ANN202 - yields a callable
    """Yield `still_same()`: True while the peer process we looked at is the one that connected.

    Without SO_PEERPIDFD it can only say the pid is still in use (the residual pid-reuse race).
    """
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pidfd = -1
    try:

        def still_same() -> bool:
            if pidfd < 0:
                return True
            try:
                signal.pidfd_send_signal(pidfd, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True  # alive, only not ours to signal
            return True

        yield still_same
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def same_user(sock: socket.socket) -> str | None:
    """The weakest test, for an NSM server with no enclave behind it (in-process tests):
    the peer runs as our user. None = accepted, else the reason for the refusal."""
    peer = peer_of(sock)
    if peer.uid != os.geteuid():
        return f"{peer}: not uid {os.geteuid()}"
    return None


class EnclaveMembership:
    """Decides whether a socket peer is a process of one enclave (see the module docstring).

    The NSM server starts before the enclave runs; a connection that arrives before the monitor
    learns the enclave's pid waits for it (at most `wait_s`) and is refused if it never comes.
    """

    def __init__(self, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self.mechanism = "unknown"
        self._known = threading.Event()
        self._enclave_pid: int | None = None
        self._enclave_ns: str | None = None
        self._enclave_uid: int | None = None

    def enclave_started(self, pid: int) -> str | None:
        """Record the enclave's init (host pid). Returns a one-line warning on a fallback."""
        warning = None
        try:
            ns = _pidns(pid)
            own = _pidns("self")
            self._enclave_uid = _uid(pid)
        except OSError as exc:
            ns = own = None
            warning = (
                f"NSM peer check: /proc/{pid} unreadable ({exc}); the NSM accepts "
                "only processes descended from the enclave's init"
            )
        if ns is not None and ns != own:
            self._enclave_ns, self.mechanism = ns, "pid-namespace"
        else:
            self.mechanism = "ancestry"
            warning = warning or (
                "NSM peer check: the enclave has no PID namespace of its own; "
                "falling back to ancestry from the enclave's init"
            )
        self._enclave_pid = pid
        self._known.set()
        return warning

    def enclave_gone(self) -> None:
        """The enclave will not run (or no longer runs): refuse whoever is still waiting."""
        self._enclave_pid = None
        self._enclave_ns = None
        self._known.set()

    def __call__(self, sock: socket.socket) -> str | None:
        """None if the peer of `sock` is a process of the enclave, else why it is refused."""
        peer = peer_of(sock)
        if peer.pid <= 0:
            return f"{peer}: the kernel gives no pid for the peer (another PID namespace?)"
        if not self._known.wait(self.wait_s) or self._enclave_pid is None:
            return f"{peer}: the enclave is not running"
        if self._enclave_uid is not None and peer.uid != self._enclave_uid:
            return f"{peer}: not the enclave's uid {self._enclave_uid}"
        with _pinned(sock) as still_same:
            try:
                if self._enclave_ns is not None:
                    ns = _pidns(peer.pid)
                    inside = ns == self._enclave_ns
                    why = f"PID namespace {ns} is not the enclave's {self._enclave_ns}"
                else:
                    inside = self._descends(peer.pid)
                    why = f"not descended from the enclave's init (pid {self._enclave_pid})"
            except OSError as exc:
                return f"{peer}: cannot inspect the peer ({exc.strerror or exc})"
            if not still_same():
                return f"{peer}: the peer exited while being checked"
        return None if inside else f"{peer}: {why}"

    def _descends(self, pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 4096:
            if pid == self._enclave_pid:
                return True
            pid = _ppid(pid)
            seen += 1
        return pid == self._enclave_pid
