"""The image's init (AWS's vtok_init): start `p11-kit server` and the RPC server, supervise.

1. Open the NSM and vsock (emulated or AF_VSOCK, as enclave_app does), generate the RSA-2048
   recipient key (memory only).
2. `p11-kit server -f -n <vsock port 9999> --provider libp11ne.so pkcs11:` — on Nitro
   `vsock:port=9999`; in the emulator vsock is a Unix socket at `<vsock root>/<cid>/9999`, so
   `unix:path=` that socket (the parent reaches it as it reaches every enclave port).
3. The RPC server on vsock port 10000, one connection at a time per thread, one device lock.
4. If either stops, the enclave stops (AWS's init exits when its provisioning server does).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import threading
from pathlib import Path

from enclave_app.attester import Attester
from enclave_app.forwarder import LoopbackForwarder
from enclave_app.keys import RecipientKey
from enclave_app.process import start_process
from enclave_app.trust import kms_verify
from enclavekit.contract import KMS_PROXY_PORT
from enclavekit.errors import EnclaveKitError
from enclavekit.transport import (
    EMULATED_VSOCK_ROOT,
    NSM_DEVICE,
    PARENT_CID,
    ConnectionServer,
    EmulatedVsock,
    VsockTransport,
    open_nsm,
    open_vsock,
)

from .device import Device
from .server import KmsDecryptor, Worker, serve_connection

log = logging.getLogger("p11ne")
P11KIT_PORT = 9999
RPC_PORT = 10000


class RpcServer(ConnectionServer):
    thread_name = "p11ne-rpc"

    def __init__(self, listener, worker: Worker) -> None:  # type: ignore[no-untyped-def]
        super().__init__(listener)
        self.worker = worker

    def serve(self, conn, addr) -> None:  # type: ignore[no-untyped-def]
        serve_connection(conn, self.worker)


class Forwarders:
    """One loopback->vsock(3, 8000) CONNECT forwarder per region's KMS host, made on demand."""

    def __init__(self, vsock: VsockTransport) -> None:
        self.vsock = vsock
        self._by_region: dict[str, LoopbackForwarder] = {}
        self._lock = threading.Lock()

    def __call__(self, region: str) -> str:
        with self._lock:
            fw = self._by_region.get(region)
            if fw is None:
                target = f"kms.{region}.amazonaws.com:443"
                fw = LoopbackForwarder(
                    self.vsock, PARENT_CID, KMS_PROXY_PORT, connect_target=target
                ).start()
                self._by_region[region] = fw
            return fw.proxy_url

    def stop(self) -> None:
        with self._lock:
            for fw in self._by_region.values():
                fw.stop()


def p11kit_listen_address(vsock: VsockTransport, port: int) -> str:
    """Where `p11-kit server` listens: AF_VSOCK on Nitro, the emulated port's socket here."""
    if isinstance(vsock, EmulatedVsock):
        return f"unix:path={vsock.path(vsock.own_cid, port)}"
    return f"vsock:port={port}"


def _env_path(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise EnclaveKitError(f"environment: expected {name} (set by the image), found none")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="p11ne", description=__doc__.splitlines()[0])
    p.add_argument("--p11kit-port", type=int, default=P11KIT_PORT)
    p.add_argument("--rpc-port", type=int, default=RPC_PORT)
    args = p.parse_args(argv)
    stop = start_process()
    try:
        attester = Attester(open_nsm(NSM_DEVICE))
        module_id = attester.describe().module_id
        key = RecipientKey.generate()
        vsock = open_vsock(EMULATED_VSOCK_ROOT)
        device = Device(
            Path(_env_path("P11NE_STATE")),
            _env_path("P11NE_SOFTHSM_UTIL"),
            _env_path("P11NE_BACKEND"),
        )
        address = p11kit_listen_address(vsock, args.p11kit_port)
        p11kit = subprocess.Popen(
            [_env_path("P11NE_P11KIT_SERVER"), "-f", "-n", address,
             "--provider", _env_path("P11NE_MODULE"), "pkcs11:"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        forwarders = Forwarders(vsock)
        worker = Worker(device, KmsDecryptor(attester, key, forwarders, kms_verify()))
        rpc = RpcServer(vsock.listen(args.rpc_port), worker).start()
    except (EnclaveKitError, OSError) as exc:
        log.error("start-up failed: %s", exc)
        return 1
    log.info(
        "p11ne enclave %s up: p11-kit server on %s, RPC on vsock port %d, recipient key %s",
        module_id,
        address,
        args.rpc_port,
        key.fingerprint,
    )
    code = 0
    while not stop.wait(0.5):
        if p11kit.poll() is not None:
            log.error("p11-kit server exited (%s): stopping the enclave", p11kit.returncode)
            code = 1
            break
    rpc.stop()
    forwarders.stop()
    if p11kit.poll() is None:
        p11kit.terminate()
        try:
            p11kit.wait(5)
        except subprocess.TimeoutExpired:
            p11kit.kill()
    device.wipe()
    attester.close()
    return code
