"""The emulator's security guarantees, proved with real processes (no mocks).

Threat model (docs/ARCHITECTURE.md, emulator): a parent-side process must not get an attestation
document from an enclave's NSM; a non-root local user must get nothing at all; another enclave
must not reach an enclave's vsock ports or NSM. Two enclaves run for the module: A (the echo app,
the victim) and B (tests/fixtures/probe_app, an enclave that tries to reach A). Budget: ~15 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_emulator_runtime import APP, IID, ROLE, ask

from enclavekit import attestation, nsm
from enclavekit.build import build_enclave
from enclavekit.errors import EmulatorError
from enclavekit.transport import EmulatedVsock, SocketNsm, nsm_request, recv_frame, send_frame
from local_backend.emulator.peer import EnclaveMembership, peer_of
from local_backend.emulator.runtime import EnclaveManager

pytestmark = pytest.mark.slow

PROBE_APP = Path(__file__).parent / "fixtures" / "probe_app"
PROBE_PORT = 5006


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnclaveManager]:
    m = EnclaveManager(tmp_path_factory.mktemp("emu-sec") / "st")
    try:
        yield m
    finally:
        m.terminate_all()


@pytest.fixture(scope="module")
def victim(manager: EnclaveManager) -> dict:
    eif = build_enclave(APP, manager.layout.root.parent / "echo.eif").path
    info = manager.run_enclave(eif, 1, 128, parent_role_arn=ROLE, parent_instance_id=IID)
    assert ask(manager, info["EnclaveCID"], "ECHO up") == "up"
    return info


@pytest.fixture(scope="module")
def prober(manager: EnclaveManager, victim: dict) -> dict:
    eif = build_enclave(PROBE_APP, manager.layout.root.parent / "probe.eif").path
    info = manager.run_enclave(eif, 1, 96, parent_role_arn=ROLE, parent_instance_id=IID)
    assert probe(manager, info, "CAPS").startswith("CapPrm")
    return info


def probe(m: EnclaveManager, info: dict, line: str, timeout: float = 10.0) -> str:
    """One request line to the probe enclave, retried until it listens."""
    vsock = EmulatedVsock(m.layout.vsock, 3)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = vsock.connect(info["EnclaveCID"], PROBE_PORT)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with s:
        s.settimeout(timeout)
        s.sendall(line.encode() + b"\n")
        return s.makefile("rb").readline().decode().strip()


def slot_dir(m: EnclaveManager, info: dict) -> Path:
    return m.layout.slot_dir(info["EnclaveID"].rpartition("-enc")[2])


def attacker_public_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ------------------------------------------------------------------ parent-side process


def test_host_process_gets_no_document_from_the_nsm(manager: EnclaveManager, victim: dict) -> None:
    sock_path = slot_dir(manager, victim) / "nsm.sock"
    nonce = os.urandom(16)
    request = nsm.Attestation(public_key=attacker_public_key(), nonce=nonce)
    # Through the project's own client: the channel closes, no document.
    client = SocketNsm(sock_path)
    with pytest.raises(EmulatorError, match="failed"):
        nsm_request(client, request)
    client.close()
    # Raw: connect succeeds (root may connect), the request frame is answered by a close.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(sock_path))
        with pytest.raises(OSError):  # EPIPE/ECONNRESET, or a clean EOF (ConnectionError)
            send_frame(raw, nsm.encode_request(request))
            recv_frame(raw, 1 << 16)
    # A separate parent-side process (root, not our test process) fares no better.
    code = (
        "import sys\nfrom enclavekit import nsm\n"
        "from enclavekit.transport import SocketNsm, nsm_request\n"
        "try:\n"
        "    r = nsm_request(SocketNsm(sys.argv[1]), nsm.Attestation(nonce=b'x'))\n"
        "    print('GOT', type(r).__name__)\n"
        "except Exception as e:\n"
        "    print('REFUSED', type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(sock_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "REFUSED EmulatorError", out
    # Logged in the monitor log, with the peer and the reason, without the request's bytes.
    log = (slot_dir(manager, victim) / "monitor.log").read_text()
    refusals = [ln for ln in log.splitlines() if "NSM: refused" in ln]
    assert any(f"pid {os.getpid()} uid 0" in ln and "PID namespace" in ln for ln in refusals), log
    assert len(refusals) >= 3
    assert nonce.hex() not in log and base64.b64encode(nonce).decode() not in log


def test_the_enclave_itself_still_gets_documents(manager: EnclaveManager, victim: dict) -> None:
    raw = base64.b64decode(ask(manager, victim["EnclaveCID"], "ATTEST 0a0b"))
    doc = attestation.verify(raw, attestation.TrustAnchor.local(manager.layout.root))
    assert doc.nonce == b"\x0a\x0b" and doc.module_id == victim["EnclaveID"]
    log = (slot_dir(manager, victim) / "monitor.log").read_text()
    assert "NSM peers checked by pid-namespace" in log


# ------------------------------------------------------------------ non-root local user


def test_state_is_private_dirs_0700_sockets_0600(manager: EnclaveManager, victim: dict) -> None:
    layout = manager.layout
    d = slot_dir(manager, victim)
    for path in (
        layout.root,
        layout.enclaves,
        d,
        layout.vsock,
        layout.vsock / "3",
        layout.vsock / str(victim["EnclaveCID"]),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    sock = (d / "nsm.sock").stat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    for record in ("request.json", "state.json"):
        assert stat.S_IMODE((d / record).stat().st_mode) == 0o600, record


NOBODY_SCRIPT = r"""
import json, os, socket, sys
def attempt(fn):
    try:
        fn()
        return "OK"
    except OSError as exc:
        return f"{type(exc).__name__} {exc.errno}"
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()
root, nsm_path, slot_fd, sock_fd, vsock_fd, enclave_port_fd = sys.argv[1:7]
print(json.dumps({
    "uid": os.getuid(),
    "list state dir": attempt(lambda: os.listdir(root)),
    "connect nsm.sock": attempt(lambda: connect(nsm_path)),
    # Each layer on its own, through O_PATH handles the test opened for us:
    "nsm.sock via its 0700 slot dir": attempt(lambda: connect(f"/proc/self/fd/{slot_fd}/nsm.sock")),
    "nsm.sock itself (0600)": attempt(lambda: connect(f"/proc/self/fd/{sock_fd}")),
    "list vsock dir": attempt(lambda: os.listdir(f"/proc/self/fd/{vsock_fd}")),
    "enclave vsock port via 0700 cid dir": attempt(
        lambda: connect(f"/proc/self/fd/{enclave_port_fd}/5005")),
}))
"""


# An interpreter `nobody` may execute (ours may sit under root's 0700 home); stdlib only.
NOBODY_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _as_nobody() -> None:
    user = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def test_a_non_root_user_gets_nothing(manager: EnclaveManager, victim: dict) -> None:
    d = slot_dir(manager, victim)
    fds = [
        os.open(p, os.O_PATH | os.O_CLOEXEC)
        for p in (
            d,
            d / "nsm.sock",
            manager.layout.vsock,
            manager.layout.vsock / str(victim["EnclaveCID"]),
        )
    ]
    try:
        out = subprocess.run(
            [
                NOBODY_PYTHON,
                "-S",
                "-c",
                NOBODY_SCRIPT,
                str(manager.layout.root),
                str(d / "nsm.sock"),
                *map(str, fds),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=fds,
            preexec_fn=_as_nobody,
            cwd="/",
        )
    finally:
        for fd in fds:
            os.close(fd)
    got = json.loads(out.stdout)
    assert got.pop("uid") == pwd.getpwnam("nobody").pw_uid
    assert got == dict.fromkeys(got, "PermissionError 13"), got
    assert len(got) == 6
    # Control: the same O_PATH route works for root, so the refusals above are the modes.
    assert ask(manager, victim["EnclaveCID"], "ECHO still-up") == "still-up"


# ------------------------------------------------------------------ another enclave


def test_another_enclave_cannot_reach_the_enclave(
    manager: EnclaveManager, victim: dict, prober: dict
) -> None:
    a = victim["EnclaveCID"]
    # Control: the probe does reach a parent listener, so its vsock client works.
    parent = EmulatedVsock(manager.layout.vsock, 3)
    server = parent.listen(7101)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b"parent here\n")

    t = threading.Thread(target=answer)
    t.start()
    try:
        assert probe(manager, prober, "VSOCK 3 7101") == "CONNECTED parent here"
    finally:
        t.join(5)
        server.close()
        parent.path(3, 7101).unlink()
    # The victim's port is reachable from the parent ...
    assert ask(manager, a, "ECHO from-parent") == "from-parent"
    # ... and not from the other enclave: not by vsock address, not by the host paths.
    assert probe(manager, prober, f"VSOCK {a} 5005").startswith("REFUSED"), a
    host_port = manager.layout.vsock / str(a) / "5005"
    assert host_port.exists()
    for target in (host_port, slot_dir(manager, victim) / "nsm.sock"):
        assert probe(manager, prober, f"UNIX {target}").startswith("REFUSED 2 "), target
    # Abstract Unix sockets belong to a network namespace: the host's (or another enclave's)
    # are out of reach, though the host itself connects to this one.
    name = f"enclavekit-sec-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract:
        abstract.bind("\0" + name)
        abstract.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as host_side:
            host_side.connect("\0" + name)
        assert probe(manager, prober, f"ABSTRACT {name}").startswith("REFUSED 111 ")
    # Its own NSM still answers (the refusals are not a broken probe).
    assert probe(manager, prober, "ATTEST").startswith("OK ")


def test_an_enclave_has_no_capabilities_to_break_out(manager: EnclaveManager, prober: dict) -> None:
    caps = dict(item.split(":") for item in probe(manager, prober, "CAPS").split())
    assert caps == {
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
        "NoNewPrivs": "1",
    }, caps
    assert probe(manager, prober, "MKNOD /tmp/disk").startswith("DENIED 1 ")
    record = manager.record(prober["EnclaveID"])
    assert not [w for w in record.get("Warnings", []) if "privileges" in w]


def test_an_enclave_cannot_write_the_machines_kernel_settings(
    manager: EnclaveManager, prober: dict
) -> None:
    """uid 0 needs no capability to write a sysctl: `kernel.core_pattern = |/proc/%P/root/x`
    would run the enclave's file as the machine's root at its next crash (and sysrq-trigger
    reboots the machine). /proc/sys and sysrq-trigger are read-only in the enclave, as on a
    Nitro enclave, whose kernel is its own. The probe writes the file's own content back."""
    path = "/proc/sys/kernel/core_pattern"
    assert probe(manager, prober, f"REWRITE {path}").startswith("DENIED 30 "), path
    # its own files are still writable: the refusal is the read-only /proc/sys
    assert probe(manager, prober, "REWRITE /proc/self/comm") == "WROTE"


def test_the_parent_cannot_rewrite_an_enclaves_launch_request(manager: EnclaveManager) -> None:
    """PCR3/PCR4, debug mode and the console were the monitor's reading of request.json in
    the emulator's state dir, which root on the parent can write (DAC override; in a host the
    dir is on the host's /run) in the moment between run-enclave writing it and the monitor
    starting. The monitor takes its request from run-enclave's pipe; the file is a record."""
    from enclavekit import pcr

    forged = "i-0fffffffffffffff0"
    stop = threading.Event()
    seen: set[Path] = set()

    def rewrite() -> None:
        while not stop.is_set():
            for req in manager.layout.enclaves.glob("*/request.json"):
                if req in seen:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(req.read_text())
                    data.update(instance_id=forged, keep_console=True)
                    req.write_text(json.dumps(data))
                    seen.add(req)
            time.sleep(0.0005)

    before = set(manager.layout.enclaves.glob("*/request.json"))
    seen.update(before)
    t = threading.Thread(target=rewrite, daemon=True)
    t.start()
    try:
        eif = build_enclave(PROBE_APP, manager.layout.root.parent / "probe2.eif").path
        info = manager.run_enclave(
            eif, 1, 96, name="probe-2", parent_role_arn=ROLE, parent_instance_id=IID
        )
    finally:
        stop.set()
        t.join(5)
    try:
        assert len(seen - before) == 1  # the file was rewritten before the monitor started
        assert probe(manager, info, "PCR 4") == "PCR " + pcr.pcr4_of_instance_id(IID).hex()
    finally:
        manager.terminate(info["EnclaveID"])


# ------------------------------------------------------------------ the fallback check


def test_ancestry_fallback_admits_descendants_only(tmp_path: Path) -> None:
    """Without a PID namespace the membership test walks up from the peer to the enclave init."""
    path = tmp_path / "dev.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    connect = (
        f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); "
        "time.sleep(30)"
    )
    init = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" -S -c "{connect}"; true'])
    child = None
    try:
        members = EnclaveMembership(wait_s=1)
        warning = members.enclave_started(init.pid)
        assert members.mechanism == "ancestry" and "falling back to ancestry" in warning
        server.settimeout(20)
        descendant, _ = server.accept()
        with descendant:
            child = peer_of(descendant).pid
            assert child != init.pid and members(descendant) is None
        with socket.socket(socket.AF_UNIX) as outsider:
            outsider.connect(str(path))
            conn, _ = server.accept()
            with conn:
                reason = members(conn)
        assert reason == (
            f"pid {os.getpid()} uid {os.geteuid()}: not descended from the "
            f"enclave's init (pid {init.pid})"
        )
        members.enclave_gone()
        with socket.socket(socket.AF_UNIX) as late:
            late.connect(str(path))
            conn, _ = server.accept()
            with conn:
                assert "the enclave is not running" in members(conn)
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        init.kill()
        init.wait()
        server.close()
