"""The off-instance services of a host (IMDS, the AWS service names' HTTPS) in a network of their
own, one veth hop from the host's network.

On EC2, IMDS and the AWS endpoints are not sockets of the instance: a web server in the instance
may bind 0.0.0.0:80 and 0.0.0.0:443 (AWS's stock nginx.conf does). A listener on
169.254.169.254:80 or 127.0.0.1:443 inside the host's own network would make those binds fail
(EADDRINUSE: a wildcard bind conflicts with any listener on the same port) and would take the
forwarded port's connections. So the launcher puts those listeners in a second network
namespace holding 169.254.169.254 (IMDS) and SERVICES_ADDRESS (what the host's /etc/hosts maps
the AWS service names to), linked to the host's by a veth pair with /32 routes both ways.
Nothing else is routed: the host still has no way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Callable

from local_backend.emulator import isolation as iso

IMDS_ADDRESS = "169.254.169.254"
SERVICES_ADDRESS = "169.254.171.1"  # the AWS service names inside a host
HOST_SIDE_ADDRESS = "169.254.171.2"  # the host's end of the link
HOST_IF, SERVICES_IF = "ek-host", "ek-services"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"


def _ip_batch(commands: list[str]) -> None:
    subprocess.run(
        [IP, "-batch", "-"],
        input="\n".join(commands) + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=10,
    )


def _setns(fd: int) -> None:
    if iso._libc.setns(fd, iso.CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns(net) failed")


def listen_off_host(
    ports: list[tuple[str, int]], warn: Callable[[str], None]
) -> list[socket.socket] | None:
    """Listening sockets on (address, port) in a services network linked to the calling
    process's (the host's) network; None (and a warning) when the link cannot be made, so the
    caller binds in the host's own network as before. Call from the host's network namespace,
    single-threaded, with CAP_NET_ADMIN and CAP_SYS_ADMIN; returns in the host's."""
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    svc_ns = -1
    sockets: list[socket.socket] = []
    try:
        # No fork: the caller may have unshared a PID namespace, whose first child is its init.
        iso.unshare(iso.CLONE_NEWNET)
        svc_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(host_ns)
        # One `ip -batch` per namespace rather than one process per command (it stops at
        # the first failing line, as check=True did per command).
        _ip_batch(
            [
                f"link add {HOST_IF} type veth peer name {SERVICES_IF}",
                f"link set {SERVICES_IF} netns /proc/{os.getpid()}/fd/{svc_ns}",
                f"addr add {HOST_SIDE_ADDRESS}/32 dev {HOST_IF}",
                f"link set {HOST_IF} up",
                *(
                    f"route add {addr}/32 dev {HOST_IF} src {HOST_SIDE_ADDRESS}"
                    for addr in (IMDS_ADDRESS, SERVICES_ADDRESS)
                ),
            ]
        )
        _setns(svc_ns)
        try:
            iso.loopback_up()
            _ip_batch(
                [
                    *(
                        f"addr add {addr}/32 dev {SERVICES_IF}"
                        for addr in (IMDS_ADDRESS, SERVICES_ADDRESS)
                    ),
                    f"link set {SERVICES_IF} up",
                    f"route add {HOST_SIDE_ADDRESS}/32 dev {SERVICES_IF}",
                ]
            )
            for addr, port in ports:
                sockets.append(socket.create_server((addr, port), backlog=64))
        finally:
            _setns(host_ns)
    except (OSError, subprocess.SubprocessError) as exc:
        for s in sockets:
            s.close()
        with contextlib.suppress(OSError):
            _setns(host_ns)
        warn(f"no services network ({exc}); IMDS and the AWS names listen in the host's own")
        return None
    finally:
        os.close(host_ns)
        if svc_ns >= 0:
            os.close(svc_ns)  # its listening sockets keep the namespace alive
    return sockets
