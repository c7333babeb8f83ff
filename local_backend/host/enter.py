"""Run a command inside a running instance host (what `nsenter -t PID -m -u -n -p` does):
`python -m local_backend.host.enter INIT_PID COMMAND...`.

Used from the machine (root) to look at a host as the host sees itself, e.g.
`nitro-cli describe-enclaves`: process ids, sockets and paths only make sense in there.
"""

from __future__ import annotations

import ctypes
import os
import sys

from local_backend.emulator import isolation as iso
from local_backend.host import sandbox

# What the host's own root lacks: a command run in here is the host's (its PATH, its /usr
# overlay), so it must not run with the machine's capabilities (CAP_SYS_MODULE,
# CAP_DAC_READ_SEARCH's open_by_handle_at, CAP_MKNOD of a disk ... are ways out).
HOST_LACKS = {**sandbox.DROPPED_CAPABILITIES, **sandbox.USER_DROPPED_CAPABILITIES}

_NAMESPACES = (
    ("net", iso.CLONE_NEWNET),
    ("uts", iso.CLONE_NEWUTS),
    ("ipc", iso.CLONE_NEWIPC),
    ("pid", iso.CLONE_NEWPID),
    ("mnt", iso.CLONE_NEWNS),  # last: afterwards /proc is the host's
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pid, command = int(args[0]), args[1:]
    fds = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY), flag) for name, flag in _NAMESPACES]
    env = {}
    with open(f"/proc/{pid}/environ", "rb") as fh:
        for item in fh.read().split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                env[key] = value
    for fd, flag in fds:
        if iso._libc.setns(ctypes.c_int(fd), ctypes.c_int(flag)) != 0:
            print(
                f"enter: setns {flag:#x} refused: {os.strerror(ctypes.get_errno())}",
                file=sys.stderr,
            )
            return 1
        os.close(fd)
    os.chdir("/")
    child = os.fork()  # the PID namespace applies to children only
    if child == 0:
        sandbox.drop_capabilities(lambda text: print(f"enter: {text}", file=sys.stderr), HOST_LACKS)
        os.execvpe(command[0], command, env)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
