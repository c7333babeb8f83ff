"""The enclave emulator end to end: boot an EIF, attest, vsock both ways, isolation, limits.

Real enclaves (processes in their own namespaces with cgroup limits) booted from an EIF built
from tests/fixtures/echo_app; every enclave is terminated in fixture teardown.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit import attestation, pcr
from enclavekit.build import build_enclave
from enclavekit.cli import main as cli_main
from enclavekit.errors import EmulatorError, InvalidInput
from enclavekit.transport import EmulatedVsock
from local_backend.emulator.runtime import EnclaveManager
from local_backend.emulator.vsock_proxy import VsockProxy

pytestmark = pytest.mark.slow

APP = Path(__file__).parent / "fixtures" / "echo_app"
IID = "i-0a22e5c5f24d22174"
ROLE = "arn:aws:iam::123456789012:role/enclave-parent"
PORT = 5005


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emu")


@pytest.fixture(scope="module")
def eif(state: Path) -> Path:
    return build_enclave(APP, state / "echo.eif").path


@pytest.fixture(scope="module")
def manager(state: Path) -> Iterator[EnclaveManager]:
    m = EnclaveManager(state / "st")
    try:
        yield m
    finally:
        m.terminate_all()


def ask(m: EnclaveManager, cid: int, line: str, timeout: float = 10.0) -> str:
    """One request line to the echo app on (cid, 5005), retried until it listens."""
    vsock = EmulatedVsock(m.layout.vsock, 3)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = vsock.connect(cid, PORT)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    with s:
        s.settimeout(timeout)
        s.sendall(line.encode() + b"\n")
        return s.makefile("rb").readline().decode().strip()


@pytest.fixture(scope="module")
def enclave(manager: EnclaveManager, eif: Path) -> dict:
    info = manager.run_enclave(eif, 1, 128, parent_role_arn=ROLE, parent_instance_id=IID)
    assert ask(manager, info["EnclaveCID"], "ECHO up") == "up"
    return info


@pytest.fixture(scope="module")
def debug_enclave(manager: EnclaveManager, eif: Path, enclave: dict) -> dict:
    info = manager.run_enclave(
        eif, 1, 96, debug_mode=True, parent_role_arn=ROLE, parent_instance_id=IID, name="echo-debug"
    )
    assert ask(manager, info["EnclaveCID"], "ECHO up") == "up"
    return info


def test_run_and_describe_have_nitro_cli_shapes(
    manager: EnclaveManager, enclave: dict, eif: Path
) -> None:
    assert list(enclave) == [
        "EnclaveName",
        "EnclaveID",
        "ProcessID",
        "EnclaveCID",
        "NumberOfCPUs",
        "CPUIDs",
        "MemoryMiB",
    ]
    assert re.fullmatch(rf"{IID}-enc[0-9a-f]{{16}}", enclave["EnclaveID"])
    assert enclave["EnclaveCID"] >= 16 and enclave["EnclaveName"] == "echo-app"
    (item,) = [d for d in manager.describe() if d["EnclaveID"] == enclave["EnclaveID"]]
    assert item["State"] == "RUNNING" and item["Flags"] == "NONE"
    assert (
        item["Measurements"]
        == build_enclave(APP, eif.with_name("again.eif")).measurements.to_nitro_cli()
    )
    assert item["Runtime"]["Packages"] == {"cbor2": "6.3.0"}
    assert "not measured" in item["Runtime"]["Provider"]


def test_attestation_carries_eif_pcrs_and_verifies_against_local_root(
    manager: EnclaveManager, enclave: dict, eif: Path
) -> None:
    raw = base64.b64decode(ask(manager, enclave["EnclaveCID"], "ATTEST 00ff"))
    doc = attestation.verify(raw, attestation.TrustAnchor.local(manager.layout.root))
    meas = build_enclave(APP, eif.with_name("m.eif")).measurements
    assert (doc.pcrs[0], doc.pcrs[1], doc.pcrs[2]) == (meas.pcr0, meas.pcr1, meas.pcr2)
    assert doc.pcrs[3] == pcr.pcr3_of_role_arn(ROLE)
    assert doc.pcrs[4] == pcr.pcr4_of_instance_id(IID)
    assert doc.module_id == enclave["EnclaveID"]
    assert (doc.nonce, doc.user_data) == (b"\x00\xff", b"echo-app")
    assert not doc.is_debug


def test_debug_mode_zeroes_pcrs_and_has_a_console(
    manager: EnclaveManager, enclave: dict, debug_enclave: dict
) -> None:
    raw = base64.b64decode(ask(manager, debug_enclave["EnclaveCID"], "ATTEST 01"))
    doc = attestation.verify(raw, attestation.TrustAnchor.local(manager.layout.root))
    assert doc.is_debug and all(doc.pcrs[i] == bytes(48) for i in (0, 1, 2, 8))
    assert doc.pcrs[3] == pcr.pcr3_of_role_arn(ROLE)
    assert doc.pcrs[4] == pcr.pcr4_of_instance_id(IID)
    out = b"".join(manager.console(debug_enclave["EnclaveID"], disconnect_timeout=0.3))
    assert b"echo-app ready on vsock port 5005" in out and b"ATTEST ->" in out
    with pytest.raises(EmulatorError, match="only for debug-mode enclaves"):
        list(manager.console(enclave["EnclaveID"]))


def test_vsock_echo_both_ways(manager: EnclaveManager, enclave: dict) -> None:
    assert ask(manager, enclave["EnclaveCID"], "ECHO parent->enclave") == "parent->enclave"
    parent = EmulatedVsock(manager.layout.vsock, 3)
    server = parent.listen(7001)

    def reply() -> None:
        conn, _ = server.accept()
        with conn:
            line = conn.makefile("rb").readline()
            conn.sendall(b"parent got " + line)

    t = threading.Thread(target=reply)
    t.start()
    try:
        got = ask(manager, enclave["EnclaveCID"], "CALLPARENT 7001 enclave->parent")
    finally:
        t.join(5)
        server.close()
        parent.path(3, 7001).unlink()
    assert got == "parent got enclave->parent"


def test_enclave_cannot_reach_a_host_tcp_port(manager: EnclaveManager, enclave: dict) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from host
        got = ask(manager, enclave["EnclaveCID"], f"TCP {port}")
    assert got.startswith("REFUSED"), got


def test_enclave_sees_only_its_image_runtime_and_vsock(
    manager: EnclaveManager, enclave: dict, debug_enclave: dict, state: Path
) -> None:
    cid = enclave["EnclaveCID"]
    secret = state / "host-secret.txt"
    secret.write_text("parent only")
    for path in (
        secret,
        manager.layout.root / "pki" / "root.pem",
        manager.layout.root / "emulator" / "instance-id",
        Path("/etc/shadow"),
    ):
        assert ask(manager, cid, f"READ {path}").startswith("DENIED"), path
    assert ask(manager, cid, "READ /app/main.py").startswith("READ ")  # its own image
    assert ask(manager, cid, "LS /run/enclavekit/vsock") == " ".join(
        sorted(["3", str(cid), "self"])
    )
    assert ask(manager, cid, "PIDS") == "1"  # its own PID namespace
    assert ask(manager, cid, "LS /") == "app bin dev etc lib lib64 proc root run sys tmp usr var"


def test_memory_limit_kills_and_reports(manager: EnclaveManager, eif: Path) -> None:
    info = manager.run_enclave(eif, 1, 64, name="echo-oom")
    try:
        assert ask(manager, info["EnclaveCID"], "ECHO up") == "up"
        with _ConnectionMayDrop():
            ask(manager, info["EnclaveCID"], "ALLOC 256", timeout=20)
        deadline = time.monotonic() + 20
        while True:
            (item,) = [d for d in manager.describe() if d["EnclaveID"] == info["EnclaveID"]]
            if item["State"] != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert item["State"] == "TERMINATED"
        assert "out of memory" in item["ExitReason"] and "64 MiB" in item["ExitReason"]
    finally:
        manager.terminate(info["EnclaveID"])


class _ConnectionMayDrop:
    """The connection may end empty or reset when the enclave is killed mid-request."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is None or issubclass(exc[0], OSError)  # type: ignore[arg-type]


def test_terminate_leaves_no_process_behind(manager: EnclaveManager, eif: Path) -> None:
    info = manager.run_enclave(eif, 1, 64, name="echo-term")
    assert ask(manager, info["EnclaveCID"], "ECHO up") == "up"
    record = manager.record(info["EnclaveID"])
    pids = [record["ProcessID"], record["EnclavePID"]]
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    out = manager.terminate(info["EnclaveID"])
    assert out == {"EnclaveName": "echo-term", "EnclaveID": info["EnclaveID"], "Terminated": True}
    for p in pids:  # gone, not even a zombie: the manager reaps the monitor it started
        assert not Path(f"/proc/{p}").exists(), p
    assert not (manager.layout.vsock / str(info["EnclaveCID"])).exists()
    slot = info["EnclaveID"].rpartition("-enc")[2]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/**/enclavekit-{slot}"))
    assert info["EnclaveID"] not in [d["EnclaveID"] for d in manager.describe()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu-count", "1", "--memory", "32"], "at least 64 MiB"),
        (["--cpu-count", "64", "--memory", "128"], "CPUs of this machine"),
        (["--cpu-count", "1", "--memory", "128", "--enclave-cid", "2"], "0-3 are reserved"),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(
    eif: Path, state: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        ["run-enclave", "--eif-path", str(eif), "--state-dir", str(state / "cli"), *args]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_describe_prints_a_json_array(
    manager: EnclaveManager, enclave: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert cli_main(["describe-enclaves", "--state-dir", str(manager.layout.root)]) == 0
    items = json.loads(capsys.readouterr().out)
    assert isinstance(items, list) and enclave["EnclaveID"] in [i["EnclaveID"] for i in items]


def test_vsock_proxy_allowlist_and_relay_to_local_endpoint(
    manager: EnclaveManager, enclave: dict, state: Path
) -> None:
    config = state / "vsock-proxy.yaml"
    config.write_text("allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n")
    with pytest.raises(InvalidInput, match="not in the allowlist"):
        VsockProxy.for_state_dir(
            manager.layout.root,
            8000,
            "s3.us-east-1.amazonaws.com",
            443,
            config=config,
            endpoint="http://127.0.0.1:1",
        )
    upstream = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = upstream.accept()
        with conn:
            conn.sendall(b"local endpoint got " + conn.makefile("rb").readline())

    t = threading.Thread(target=echo)
    t.start()
    proxy = VsockProxy.for_state_dir(
        manager.layout.root,
        8000,
        "kms.us-east-1.amazonaws.com",
        443,
        config=config,
        endpoint="http://127.0.0.1:1",  # port 443 goes to the TLS front, not here
        tls_endpoint=f"https://127.0.0.1:{upstream.getsockname()[1]}",
    ).start()
    try:
        got = ask(manager, enclave["EnclaveCID"], "CALLPARENT 8000 hello-kms")
    finally:
        proxy.stop()
        t.join(5)
        upstream.close()
    assert got == "local endpoint got hello-kms"
    assert not (manager.layout.vsock / "3" / "8000").exists()
