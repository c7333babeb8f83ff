"""The launcher of one instance host: `python -m local_backend.host.boot INSTANCE_DIR`.

Started by the EC2 start hook (`local_backend.host.hooks`) in a session of its own. It:
1. writes the first-boot disk (`rootfs.prepare`) and the user data where cloud-init keeps it;
2. forks the host: new namespaces (`sandbox`), its root, then PID 1 = `host.init`, whose
   stdout/stderr is the console (`console.log`);
3. serves, from the machine's network, sockets that live in the host's network namespace:
   IMDS at 169.254.169.254:80, the local endpoint at 127.0.0.1:<endpoint port> (so
   `http://localhost:<port>` means the same inside and out), and one loopback port on the
   machine per TCP port the instance's security groups allow in, connected into the host;
4. reports in host.json: state, warnings, forwarded ports, and cloud-init's result once the
   user data has run. SIGTERM stops the host (PID 1 stops services; its namespace dies).
"""

from __future__ import annotations

import array
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from enclavekit.contract import STATE_ENV
from enclavekit.localenv import INSTANCE_SOURCE_ADDRESS
from enclavekit.transport import ConnectionServer, pump
from local_backend.emulator import isolation as iso
from local_backend.host import prepared, rootfs, sandbox, services_net
from local_backend.host.layout import HOST_EMULATOR_STATE, HOST_IDENTITY, HostLayout

log = logging.getLogger("enclavekit.host")
# What the driver gets of <state>/pki: the attestation PKI, and the endpoint TLS CA's
# certificate (the enclaves' trust anchor for AWS hosts; never its key).
PKI_FILES = ("root.pem", "root.key", "regional.pem", "regional.key", "aws-tls/root.pem")
MAX_FORWARDED_RANGE = 64  # ports per rule; a wider rule (or "all traffic") forwards none
CA_BUNDLE = "/etc/pki/tls/certs/ca-bundle.crt"


def _send_fds(sock: socket.socket, fds: list[int], names: list[str]) -> None:
    sock.sendmsg(
        [json.dumps(names).encode()],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
    )


def _recv_fds(sock: socket.socket) -> dict[str, int]:
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return dict(zip(json.loads(msg.decode()), fds, strict=True))


def forwarded_ports(ingress: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """The TCP ports the security groups let in, and notes on rules that forward nothing."""
    ports: set[int] = set()
    notes = []
    for rule in ingress:
        proto = str(rule.get("protocol", "")).lower()
        if proto not in ("tcp", "6", "-1"):
            continue
        low, high = rule.get("from"), rule.get("to")
        if proto == "-1" or low is None or high is None or int(low) < 0:
            notes.append("an all-traffic ingress rule forwards no port (list ports to forward)")
            continue
        if int(high) - int(low) >= MAX_FORWARDED_RANGE:
            notes.append(
                f"ingress {low}-{high}: more than {MAX_FORWARDED_RANGE} ports, none forwarded"
            )
            continue
        ports.update(range(int(low), int(high) + 1))
    return sorted(ports), notes


class _EndpointRelay(ConnectionServer):
    """Connections to the endpoint port inside the host go to the endpoint on the machine."""

    thread_name = "endpoint-relay"

    def __init__(self, listener: socket.socket, port: int) -> None:
        super().__init__(listener)
        self.port = port

    def serve(self, conn: socket.socket, addr: object) -> None:
        with conn:
            try:  # from the instances' address: the endpoint knows the request is an instance's
                upstream = socket.create_connection(
                    ("127.0.0.1", self.port),
                    timeout=10,
                    source_address=(INSTANCE_SOURCE_ADDRESS, 0),
                )
            except OSError:
                return
            upstream.settimeout(None)
            with upstream:
                pump(conn, upstream)


class _PortForward(ConnectionServer):
    """127.0.0.1:<free port> on the machine -> 127.0.0.1:<port> inside the host's netns."""

    thread_name = "port-forward"

    def __init__(self, netns_fd: int, port: int) -> None:
        super().__init__(socket.create_server(("127.0.0.1", 0), backlog=64))
        self.netns_fd = netns_fd
        self.port = port
        self.host_port: int = self._listener.getsockname()[1]

    def serve(self, conn: socket.socket, addr: object) -> None:
        # This thread enters the host's network namespace (setns is per thread) to connect.
        with conn:
            if iso._libc.setns(ctypes.c_int(self.netns_fd), ctypes.c_int(iso.CLONE_NEWNET)) != 0:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            with upstream:
                pump(conn, upstream)


def _child(
    layout: HostLayout,
    plan: sandbox.SandboxPlan,
    info: dict[str, Any],
    endpoint_port: int,
    fd_sock: socket.socket,
    status_w: int,
    console_fd: int,
    identity: dict[str, Any],
    driver_sock: socket.socket,
) -> None:
    """The forked host: namespaces, listeners handed back, root, then PID 1 = host.init."""

    def say(line: str) -> None:
        os.write(status_w, (line.replace("\n", " ") + "\n").encode())

    try:
        iso._libc.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        tls_port = _tls_port(info)
        wanted = [(services_net.IMDS_ADDRESS, 80)]
        if tls_port:
            wanted.append((services_net.SERVICES_ADDRESS, 443))
        off: list[list[socket.socket] | None] = [None]

        def in_net() -> None:
            off[0] = services_net.listen_off_host(wanted, lambda t: say(f"WARN {t}"))
            if off[0] is not None:  # 169.254.169.254 is one hop away now, not on lo
                subprocess.run(
                    [services_net.IP, "addr", "del", f"{sandbox.IMDS_ADDRESS}/32", "dev", "lo"],
                    capture_output=True,
                    check=False,
                )

        ns = sandbox.enter_namespaces(lambda t: say(f"WARN {t}"), in_net)
        if not ns.mount:
            say(
                "FAILED the machine allows no mount namespace: the user data is not run (it "
                "would change the machine's own files)"
            )
            os._exit(1)
        fds, names = [], []
        if ns.net:
            # IMDS and the AWS names' HTTPS live off the instance (services_net), so the
            # host's own ports 80 and 443 stay free for its web servers, as on EC2.
            off_host = off[0]
            if off_host is None:
                off_host = []
                with contextlib.suppress(OSError):
                    sandbox._add_address("lo:2", services_net.SERVICES_ADDRESS)
                for addr, port in wanted:
                    try:
                        off_host.append(socket.create_server((addr, port), backlog=64))
                    except OSError as exc:
                        say(f"WARN cannot listen on {addr}:{port} ({exc.strerror})")
            for s in off_host:
                fds.append(s.fileno())
                names.append("imds" if s.getsockname()[1] == 80 else "tls443")
            relay = socket.create_server(("127.0.0.1", endpoint_port), backlog=64)
            fds.append(relay.fileno())
            names.append("endpoint")
            if tls_port:
                # The endpoint's TLS front at its own port (vsock-proxy's target for the
                # enclaves' KMS traffic) and, above, at 443 of the AWS service names (their CA
                # is in the host's bundle).
                front = socket.create_server(("127.0.0.1", tls_port), backlog=64)
                fds.append(front.fileno())
                names.append("tls")
        netns = os.open("/proc/self/ns/net", os.O_RDONLY)
        fds.append(netns)
        names.append("netns")
        _send_fds(fd_sock, fds, names)
        sandbox.build_root(plan, lambda t: say(f"WARN {t}"))
        ident = Path(plan.mount_point) / HOST_IDENTITY.lstrip("/")
        ident.parent.mkdir(parents=True, exist_ok=True)
        ident.write_text(json.dumps(identity, indent=2) + "\n")
        pid = os.fork()
        if pid == 0:
            # The host lives only as long as its launcher chain: a killed launcher takes it along.
            iso._libc.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            sandbox.become_root(plan, ns, lambda t: say(f"WARN {t}"))
            os.umask(0o022)  # systemd's and the kernel's default, not the endpoint's 077
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(console_fd, 1)
            os.dup2(console_fd, 2)
            env = host_environment(info, endpoint_port)
            fd = driver_sock.fileno()
            os.set_inheritable(fd, True)  # PID 1 hands it to the driver alone
            argv = [sys.executable, "-m", "local_backend.host.init", "--driver-fd", str(fd)]
            os.execve(sys.executable, argv, env)
        say(f"RUNNING {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"EXIT {os.waitstatus_to_exitcode(status)}")
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - reported, then the child ends
        with contextlib.suppress(OSError):
            say(f"FAILED {type(exc).__name__}: {exc}")
        os._exit(1)


def _tls_port(info: dict[str, Any]) -> int | None:
    url = info.get("tls_endpoint")
    return urlsplit(url).port if url else None


def _trust_endpoint_ca(layout: HostLayout, state_dir: Path) -> None:
    """Add the endpoint TLS front's CA to the host's CA bundles (every boot: the endpoint's CA
    can be newer than the host's disk), as an AMI trusts the public CAs AWS's names use."""
    try:
        pem = (state_dir / "pki" / "aws-tls" / "root.pem").read_text()
    except OSError:
        return
    for bundle in ("/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/certs/ca-certificates.crt"):
        path = layout.inside(bundle)
        current = path.read_text() if path.exists() else ""
        if pem.strip() not in current:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(current + ("" if current.endswith("\n") or not current else "\n") + pem)


def host_environment(info: dict[str, Any], endpoint_port: int) -> dict[str, str]:
    """PID 1's environment (what cloud-init and user data inherit): AL2023's, plus the one
    thing the local run adds — SDKs and the AWS CLI reach AWS at the endpoint relay."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "LANG": "C.UTF-8",
        "TERM": "linux",
        # The project (the host's tools are its code) and the hook that gives
        # `python3.11 -m venv` / `pip install` a prepared result of the same command
        # (`local_backend.host.prepared`).
        "PYTHONPATH": f"{rootfs.project_root()}:{prepared.HOOK_DIR}",
        "AWS_ENDPOINT_URL": f"http://localhost:{endpoint_port}",
        "AWS_DEFAULT_REGION": info["region"],
        "ENCLAVEKIT_LOCAL_ENDPOINT": f"http://localhost:{endpoint_port}",
        "AWS_CA_BUNDLE": CA_BUNDLE,
        **(
            {"ENCLAVEKIT_LOCAL_TLS_ENDPOINT": f"https://127.0.0.1:{_tls_port(info)}"}
            if _tls_port(info)
            else {}
        ),
        STATE_ENV: HOST_EMULATOR_STATE,
        # PyPI, as a host with no route out can have it: the project's wheelhouse of pinned
        # wheels (`make setup`), a local index pip resolves from; anything else is not found.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(rootfs.wheelhouse()),
    }


def _hostname(info: dict[str, Any]) -> str:
    ip = info.get("private_ip") or "10.0.0.10"
    region = info["region"]
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{ip.replace('.', '-')}.{domain}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    layout = HostLayout(Path(args[0]).resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s host %(message)s")
    info = layout.read_info()
    state_dir = Path(info["state_dir"])
    endpoint = info["endpoint"]
    endpoint_port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    layout.write_host(state="booting", pid=os.getpid(), warnings=[], ports=[], boot=None)
    hostname = _hostname(info)
    rootfs.prepare(layout, hostname=hostname, region=info["region"])
    _trust_endpoint_ca(layout, state_dir)
    iid = info["instance_id"]
    # resolved in full on the host's disk (`inside`): its links are the host root's
    user_data = layout.inside(f"/var/lib/cloud/instances/{iid}/user-data.txt")
    user_data.parent.mkdir(parents=True, exist_ok=True)
    if info.get("user_data") and not user_data.exists():
        user_data.write_bytes(base64.b64decode(info["user_data"]))
    layout.mount_point.mkdir(exist_ok=True)
    plan = sandbox.SandboxPlan(
        rootfs=str(layout.rootfs),
        mount_point=str(layout.mount_point),
        hostname=hostname,
        tool_mounts=rootfs.tool_mounts(),
    )
    identity = {
        k: info.get(k)
        for k in (
            "instance_id",
            "account_id",
            "region",
            "instance_type",
            "image_id",
            "role_arns",
            "private_ip",
            "enclave_enabled",
        )
    }
    console_fd = os.open(layout.console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    # The enclave driver's line to the launcher (the local PKI, on its first enclave).
    pki_sock, driver_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        pki_sock.close()
        os.close(status_r)
        _child(
            layout,
            plan,
            info,
            endpoint_port,
            child_sock,
            status_w,
            console_fd,
            identity,
            driver_sock,
        )
    child_sock.close()
    driver_sock.close()
    threading.Thread(
        target=_serve_pki, args=(pki_sock, state_dir, info["region"]), daemon=True
    ).start()
    os.close(status_w)
    os.close(console_fd)
    servers: list[ConnectionServer] = []
    warnings: list[str] = []
    init_pid: list[int] = []

    def stop(_signum: int, _frame: object) -> None:
        for p in init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while init_pid and time.monotonic() < deadline and Path(f"/proc/{init_pid[0]}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for p in init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        layout.write_host(state="stopped")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parent_sock.settimeout(30)
    try:
        fds = _recv_fds(parent_sock)
    except OSError:
        fds = {}
    from local_backend.host import imds

    if "imds" in fds:
        imds.serve(socket.socket(fileno=fds["imds"]), info)
    if "endpoint" in fds:
        servers.append(_EndpointRelay(socket.socket(fileno=fds["endpoint"]), endpoint_port).start())
    tls_port = _tls_port(info)
    for name in ("tls", "tls443"):
        if name in fds and tls_port:
            servers.append(_EndpointRelay(socket.socket(fileno=fds[name]), tls_port).start())
    ports: list[dict[str, int]] = []
    if "netns" in fds and "endpoint" in fds:
        wanted, notes = forwarded_ports(info.get("ingress") or [])
        warnings.extend(notes)
        for port in wanted:
            fwd = _PortForward(fds["netns"], port).start()
            servers.append(fwd)
            ports.append({"port": port, "host_port": fwd.host_port})
    layout.write_host(ports=ports, warnings=warnings)
    threading.Thread(target=_watch_boot, args=(layout,), daemon=True).start()
    with os.fdopen(status_r, "r") as status:
        for line in status:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "WARN":
                warnings.append(text)
                log.warning("%s: %s", iid, text)
                layout.write_host(warnings=warnings)
            elif kind == "RUNNING":
                init_pid.append(int(text))
                layout.write_host(state="running", init_pid=int(text))
            elif kind == "FAILED":
                layout.write_host(state="failed", error=text)
                log.error("%s: %s", iid, text)
            elif kind == "EXIT":
                layout.write_host(state="stopped", exit=text)
    os.waitpid(pid, 0)
    return 0


def _serve_pki(sock: socket.socket, state_dir: Path, region: str) -> None:
    """Answer the host driver's requests for the local PKI (created on the first enclave, as
    the Metadata path does): the files its enclaves' attestations are signed with, which only
    the driver's private mount holds inside the host."""
    from enclavekit.pki import LocalPki

    with sock, sock.makefile("rwb") as f:
        for line in f:
            if line.strip() != b"pki":
                break
            directory = LocalPki.load_or_create(state_dir, region=region).directory
            files = {n: (directory / n).read_text() for n in PKI_FILES if (directory / n).is_file()}
            f.write(json.dumps(files).encode() + b"\n")
            f.flush()


def _watch_boot(layout: HostLayout) -> None:
    """Copy cloud-init's result into host.json once the user data has run."""
    while True:
        result = layout.boot_result()
        if result is not None:
            failures = (result.get("enclavekit") or {}).get("failures") or []
            errors = (result.get("v1") or {}).get("errors") or []
            layout.write_host(
                boot={
                    "state": "failed" if errors else "done",
                    "errors": errors,
                    "failures": failures,
                    "notes": (result.get("enclavekit") or {}).get("notes", []),
                }
            )
            return
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
