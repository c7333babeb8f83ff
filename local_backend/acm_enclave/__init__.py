"""The local stand-in for AWS's ACM for Nitro Enclaves image (`p11ne.eif`), and how to reach it.

On AWS the `aws-nitro-enclaves-acm` package ships AWS's own enclave image; ACM releases a
certificate's private key (KMS Decrypt with an attestation document) only to that image. Here
enclavekit builds the image (image.py) and the local association key releases only to its
PCR0 (local_backend/moto_ext/ec2/certificates.py). Inside it (p11ne/): the provisioning RPC
server on vsock port 10000 speaking AWS's vtok_rpc protocol (p11ne/rpc.py) and `p11-kit server`
on vsock port 9999 in front of a token with AWS's model, manufacturer and key URI.

Public entry points:
- `p11ne_image(cache_dir) -> (p11ne.eif, image-measurements.json)`;
- `p11ne_measurements() -> Measurements` (what the association key releases to);
- `p11kit_address(instance_dir, cid, port)`: the p11-kit client address of an enclave's
  p11-kit port, where AWS's agent writes `remote: vsock:cid=N;port=9999`;
- `rpc_connect(instance_dir, cid, port)`: a socket to the enclave's RPC port
  (use with `p11ne.rpc.call`).
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

from enclavekit.pcr import Measurements

P11KIT_PORT = 9999
RPC_PORT = 10000
KEY_LABEL = "acm-key"  # the key object AWS's agent provisions for an ACM source (`s3-key` for S3)
KEY_ID = 1
PROJECT = Path(__file__).resolve().parent.parent.parent
DEFAULT_CACHE = PROJECT / ".system" / "p11ne"


def p11ne_image(cache_dir: Path = DEFAULT_CACHE) -> tuple[Path, Path]:
    """(p11ne.eif, image-measurements.json in nitro-cli build-enclave's JSON form), built once
    per content under `cache_dir` (the same inputs give the same bytes and PCRs anywhere)."""
    from .image import build

    return build(Path(cache_dir))


@functools.cache
def p11ne_measurements(cache_dir: Path = DEFAULT_CACHE) -> Measurements:
    """The PCRs of the image `p11ne_image` builds (cached per process)."""
    _eif, measured = p11ne_image(cache_dir)
    return Measurements.from_nitro_cli_json(json.loads(measured.read_text()))


def vsock_socket_path(instance_dir: Path, cid: int, port: int) -> Path:
    """The emulated vsock listener (cid, port) of the parent whose state is `instance_dir`
    (EnclaveManager(instance_dir)'s `<dir>/vsock/<cid>/<port>`)."""
    from local_backend.emulator import state

    return state.Layout(state.state_dir(instance_dir)).vsock / str(cid) / str(port)


def p11kit_address(instance_dir: Path, cid: int, port: int = P11KIT_PORT) -> str:
    """p11-kit's address of the enclave's p11-kit server as a parent process uses it:
    `unix:path=<instance_dir>/vsock/<cid>/<port>` where AWS has `vsock:cid=<cid>;port=<port>`
    (for `P11_KIT_SERVER_ADDRESS` or a `remote:` line in a p11-kit module file)."""
    return f"unix:path={vsock_socket_path(Path(instance_dir), cid, port)}"


def rpc_connect(instance_dir: Path, cid: int, port: int = RPC_PORT) -> socket.socket:
    """A connected socket to the enclave's RPC port (AWS: vsock (cid, 10000))."""
    from enclavekit.transport import EmulatedVsock
    from local_backend.emulator import state

    root = state.Layout(state.state_dir(instance_dir)).vsock
    return EmulatedVsock(root, state.PARENT_CID).connect(cid, port)


def wait_ready(instance_dir: Path, cid: int, timeout: float = 5.0, port: int = RPC_PORT) -> None:
    """Wait until the enclave's RPC port accepts connections, as AWS's agent waits up to
    acm.yaml's `boot_timeout_ms` (5000) after run-enclave; ConnectionError past `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            rpc_connect(instance_dir, cid, port).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"ACM enclave CID {cid}: RPC port {port} not up after {timeout:.0f} s ({exc})"
                ) from None
            time.sleep(0.05)
