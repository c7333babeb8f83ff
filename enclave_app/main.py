"""Start-up: transports, key pair, listeners; then serve until SIGTERM.

Sequence (README.md has the full picture):
1. logging to stderr (the enclave console); bring the loopback interface up;
2. open the NSM (`/dev/nsm`: ioctl device on Nitro, socket in the emulator) and DescribeNSM;
3. generate the RSA-2048 recipient key (memory only);
4. open vsock (AF_VSOCK on Nitro, emulated in the emulator); listen on 8443 (TLS) and 5005
   (control);
5. wait for Provision on 5005; everything else follows from it.
"""

from __future__ import annotations

import argparse
import logging
import os

import enclavekit
from enclavekit.contract import CONTROL_PORT, ENCLAVE_TLS_PORT
from enclavekit.errors import EnclaveKitError
from enclavekit.transport import EMULATED_VSOCK_ROOT, NSM_DEVICE, open_nsm, open_vsock

from .attester import Attester
from .control import ControlServer
from .keys import RecipientKey
from .process import start_process
from .service import EnclaveService
from .tls import TlsServer
from .trust import PLATFORM_CA_PATH, kms_verify

log = logging.getLogger("enclave_app")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enclave_app", description=__doc__.splitlines()[0])
    p.add_argument("--control-port", type=int, default=CONTROL_PORT)
    p.add_argument("--tls-port", type=int, default=ENCLAVE_TLS_PORT)
    p.add_argument("--nsm-device", default=NSM_DEVICE)
    p.add_argument(
        "--vsock-root",
        default=EMULATED_VSOCK_ROOT,
        help="where the emulator mounts emulated vsock (ignored on Nitro)",
    )
    p.add_argument(
        "--platform-ca",
        default=PLATFORM_CA_PATH,
        help="CA file the emulator provides for AWS hosts (absent on AWS: the image's bundle)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = start_process(args.log_level)
    try:
        attester = Attester(open_nsm(args.nsm_device))
        described = attester.describe()
        key = RecipientKey.generate()
        vsock = open_vsock(args.vsock_root)
        tls = TlsServer(vsock.listen(args.tls_port), described.module_id).start()
        service = EnclaveService(
            attester=attester,
            key=key,
            vsock=vsock,
            module_id=described.module_id,
            tls=tls,
            kms_verify=kms_verify(args.platform_ca),
        )
        control = ControlServer(vsock.listen(args.control_port), service).start()
    except (EnclaveKitError, OSError) as exc:
        log.error("start-up failed: %s", exc)
        return getattr(exc, "exit_code", 1)
    log.info(
        "enclave %s up: NSM %d.%d.%d, %s, core modules from %s; recipient key sha256 %s; "
        "TLS on vsock port %d; waiting for Provision on vsock port %d",
        described.module_id,
        described.version_major,
        described.version_minor,
        described.version_patch,
        type(vsock).__name__,
        os.path.dirname(enclavekit.__file__),
        key.fingerprint,
        args.tls_port,
        args.control_port,
    )
    stop.wait()
    log.info("stopping")
    control.stop()
    service.stop()
    tls.stop()
    attester.close()
    return 0
