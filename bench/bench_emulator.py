"""Enclave emulator: boot time, NSM round trip, attestation throughput — each against a floor.

- boot: run-enclave until the first attestation document comes back over vsock, against a bare
  `python -c pass` start (the interpreter start every boot pays anyway);
- NSM round trip (DescribePCR over the enclave's device socket, served by its monitor process)
  against a bare framed Unix-socket echo served by another process;
- attestation documents per second through the NSM against raw ES384 signatures per second.
The NSM serves only processes of the enclave's PID namespace, so its client runs in that
namespace (`nsenter --pid`, which only root can do; the emulator's threat model allows it).
"""

from __future__ import annotations

import base64
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit import nsm
from enclavekit.build import build_enclave
from enclavekit.transport import EmulatedVsock, SocketNsm
from local_backend.emulator.runtime import EnclaveManager

APP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "echo_app"
ECHO_SERVER = textwrap.dedent(
    """
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    def exact(n):
        b = b""
        while len(b) < n:
            d = c.recv(n - len(b))
            if not d: raise SystemExit
            b += d
        return b
    while True:
        n = struct.unpack(">I", exact(4))[0]
        c.sendall(struct.pack(">I", n) + exact(n))
    """
)


IN_ENCLAVE_NS = textwrap.dedent(
    """
    import sys, time
    from enclavekit import nsm
    from enclavekit.transport import SocketNsm, nsm_request
    device = SocketNsm(sys.argv[1])
    describe = nsm.encode_request(nsm.DescribePCR(index=0))
    t0 = time.perf_counter()
    for _ in range(2000):
        device.call(describe)
    rt = (time.perf_counter() - t0) / 2000
    req = nsm.Attestation(user_data=b"u" * 64, nonce=b"n" * 16)
    t0 = time.perf_counter()
    for _ in range(200):
        nsm_request(device, req)
    print(rt, 200 / (time.perf_counter() - t0))
    """
)


def _ask(vsock: EmulatedVsock, cid: int, line: str) -> str:
    while True:
        try:
            s = vsock.connect(cid, 5005)
            break
        except OSError:
            time.sleep(0.005)
    with s:
        s.sendall(line.encode() + b"\n")
        return s.makefile("rb").readline().decode().strip()


def _per_call(fn, n: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-emu-") as tmp:
        root = Path(tmp)
        eif = build_enclave(APP, root / "echo.eif").path
        manager = EnclaveManager(root / "st")
        vsock = EmulatedVsock(manager.layout.vsock, 3)
        try:
            boots = []
            for _ in range(3):
                t0 = time.perf_counter()
                info = manager.run_enclave(eif, 1, 128)
                doc = base64.b64decode(_ask(vsock, info["EnclaveCID"], "ATTEST 00"))
                boots.append(time.perf_counter() - t0)
                assert doc[:1] == b"\x84"
                manager.terminate(info["EnclaveID"])
            py = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
                py.append(time.perf_counter() - t0)

            info = manager.run_enclave(eif, 1, 128)
            slot = info["EnclaveID"].rpartition("-enc")[2]
            enclave_pid = manager.record(info["EnclaveID"])["EnclavePID"]
            inside = subprocess.run(
                [
                    "nsenter",
                    "--target",
                    str(enclave_pid),
                    "--pid",
                    "--",
                    sys.executable,
                    "-c",
                    IN_ENCLAVE_NS,
                    str(manager.layout.slot_dir(slot) / "nsm.sock"),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).parents[1],
            )
            nsm_rt, docs_s = (float(x) for x in inside.stdout.split())
            describe = nsm.encode_request(nsm.DescribePCR(index=0))

            sock_path = root / "echo.sock"
            server = subprocess.Popen(
                [sys.executable, "-c", ECHO_SERVER, str(sock_path)], stdout=subprocess.PIPE
            )
            try:
                server.stdout.readline()  # type: ignore[union-attr]
                echo = SocketNsm(sock_path)
                echo_rt = _per_call(lambda: echo.call(describe), 2000)
                echo.close()
            finally:
                server.kill()
                server.wait()

            key = ec.generate_private_key(ec.SECP384R1())
            payload = b"p" * 4500
            sigs_s = 1 / _per_call(lambda: key.sign(payload, ec.ECDSA(hashes.SHA384())), 500)
        finally:
            manager.terminate_all()

    boot, floor = statistics.median(boots), statistics.median(py)
    print(f"{'measure':<44}{'ours':>12}{'baseline':>12}{'ratio':>8}")
    print(
        f"{'boot: run-enclave -> 1st attestation (ms)':<44}{boot * 1e3:>12.1f}"
        f"{floor * 1e3:>12.1f}{boot / floor:>8.2f}   baseline: python -S -c pass"
    )
    print(
        f"{'NSM DescribePCR round trip (us)':<44}{nsm_rt * 1e6:>12.1f}"
        f"{echo_rt * 1e6:>12.1f}{nsm_rt / echo_rt:>8.2f}   baseline: framed Unix echo"
    )
    print(
        f"{'attestation documents per second':<44}{docs_s:>12.0f}"
        f"{sigs_s:>12.0f}{sigs_s / docs_s:>8.2f}   baseline: raw ES384 signs/s"
    )


if __name__ == "__main__":
    main()
