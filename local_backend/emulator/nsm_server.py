"""The emulated Nitro Secure Module, served from outside the enclave over its device channel.

The monitor process (not the enclave) owns the PCRs and the signing key, so nothing running in
the enclave can forge its measurements. Behaviour follows the real NSM
(docs/reference/nitro-attestation-nsm-eif.md §1): 32 PCRs, 0-15 locked at boot (PCR0/1/2/8 from
the EIF — zero in debug mode — PCR3 from the parent's role ARN, PCR4 from the instance id), 16-31
extendable and lockable; errors InvalidIndex / ReadOnlyIndex / InputTooLarge / InvalidArgument as
the real module answers them. Attestation fields are limited to 1024 bytes each (the AWS CDDL);
a document lists PCRs 0-15 like real ones, plus any user PCR that was extended or locked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclavekit import nsm, pcr
from enclavekit.errors import NsmMessageError
from enclavekit.transport import ConnectionServer, recv_frame, send_frame, unix_address
from local_backend.emulator.peer import same_user

MAX_PCRS = 32
BOOT_LOCKED = 16
MAX_ATTESTATION_FIELD = 1024
RANDOM_BYTES = 256
VERSION = (1, 0, 0)

# (pcrs, user_data, nonce, public_key) -> COSE_Sign1 document bytes
DocumentSigner = Callable[[dict[int, bytes], bytes | None, bytes | None, bytes | None], bytes]
# connected socket -> None to serve it, or the one-line reason it is refused
PeerCheck = Callable[[socket.socket], "str | None"]


@dataclass(frozen=True)
class BootMeasurements:
    """What the hypervisor writes into the boot PCRs of one enclave."""

    measurements: pcr.Measurements
    role_arn: str | None
    instance_id: str
    debug_mode: bool

    def boot_pcrs(self) -> dict[int, bytes]:
        pcrs = {i: pcr.ZERO_PCR for i in range(MAX_PCRS)}
        if not self.debug_mode:
            pcrs.update(
                {
                    0: self.measurements.pcr0,
                    1: self.measurements.pcr1,
                    2: self.measurements.pcr2,
                    8: self.measurements.pcr8 or pcr.ZERO_PCR,
                }
            )
        if self.role_arn:
            pcrs[3] = pcr.pcr3_of_role_arn(self.role_arn)
        pcrs[4] = pcr.pcr4_of_instance_id(self.instance_id)
        return pcrs


class NsmDevice:
    """The NSM's state machine: one request in, one response out (bytes, the wire format)."""

    def __init__(self, module_id: str, boot: BootMeasurements, signer: DocumentSigner) -> None:
        self.module_id = module_id
        self._pcrs = boot.boot_pcrs()
        self._locked = set(range(BOOT_LOCKED))
        self._touched: set[int] = set()
        self._signer = signer
        self._lock = threading.Lock()

    def handle_bytes(self, raw: bytes) -> bytes:
        if len(raw) > nsm.MAX_REQUEST_LEN:
            return nsm.encode_response(nsm.ErrorResponse(nsm.ErrorCode.InputTooLarge))
        try:
            request = nsm.decode_request(raw)
        except NsmMessageError:
            return nsm.encode_response(nsm.ErrorResponse(nsm.ErrorCode.InvalidArgument))
        response = self.handle(request)
        try:
            return nsm.encode_response(response)
        except NsmMessageError:
            return nsm.encode_response(nsm.ErrorResponse(nsm.ErrorCode.BufferTooSmall))

    def handle(self, request: nsm.Request) -> nsm.Response:
        err = nsm.ErrorResponse
        codes = nsm.ErrorCode
        with self._lock:
            match request:
                case nsm.DescribePCR(index=i):
                    if i >= MAX_PCRS:
                        return err(codes.InvalidIndex)
                    return nsm.DescribePCRResponse(lock=i in self._locked, data=self._pcrs[i])
                case nsm.ExtendPCR(index=i, data=data):
                    if i >= MAX_PCRS:
                        return err(codes.InvalidIndex)
                    if i in self._locked:
                        return err(codes.ReadOnlyIndex)
                    self._pcrs[i] = pcr.extend(self._pcrs[i], data)
                    self._touched.add(i)
                    return nsm.ExtendPCRResponse(data=self._pcrs[i])
                case nsm.LockPCR(index=i):
                    if i >= MAX_PCRS:
                        return err(codes.InvalidIndex)
                    if i in self._locked:
                        return err(codes.ReadOnlyIndex)
                    self._locked.add(i)
                    self._touched.add(i)
                    return nsm.LockPCRResponse()
                case nsm.LockPCRs(range=n):
                    if n > MAX_PCRS:
                        return err(codes.InvalidIndex)
                    self._touched.update(i for i in range(n) if i >= BOOT_LOCKED)
                    self._locked.update(range(n))
                    return nsm.LockPCRsResponse()
                case nsm.DescribeNSM():
                    return nsm.DescribeNSMResponse(
                        version_major=VERSION[0],
                        version_minor=VERSION[1],
                        version_patch=VERSION[2],
                        module_id=self.module_id,
                        max_pcrs=MAX_PCRS,
                        locked_pcrs=tuple(sorted(self._locked)),
                        digest="SHA384",
                    )
                case nsm.GetRandom():
                    return nsm.GetRandomResponse(random=secrets.token_bytes(RANDOM_BYTES))
                case nsm.Attestation(user_data=ud, nonce=nonce, public_key=pk):
                    fields = (ud, nonce, pk)
                    if any(v is not None and len(v) > MAX_ATTESTATION_FIELD for v in fields):
                        return err(codes.InputTooLarge)
                    shown = sorted(set(range(BOOT_LOCKED)) | self._touched)
                    pcrs = {i: self._pcrs[i] for i in shown}
                    try:
                        document = self._signer(pcrs, ud, nonce, pk)
                    except Exception:  # noqa: BLE001 - the device answers, it never crashes
                        return err(codes.InternalError)
                    return nsm.AttestationResponse(document=document)
            return err(codes.InvalidOperation)


class NsmServer(ConnectionServer):
    """Serves an `NsmDevice` on a Unix socket (the enclave's /dev/nsm), a thread per client.

    Every connection is first put to `peer_check` (the monitor passes an
    `peer.EnclaveMembership`: only the enclave's own processes); a refused peer is closed
    without a single byte read or written, and logged with its pid/uid and the reason only.
    Without a `peer_check` only processes of our own uid are served (in-process tests). The
    socket is 0600 before it listens, so no other user can even connect.
    """

    thread_name = "nsm"

    def __init__(
        self,
        device: NsmDevice,
        path: Path,
        *,
        peer_check: PeerCheck | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.device = device
        self.path = path
        self.peer_check: PeerCheck = peer_check or same_user
        self.log = log or logging.getLogger("enclavekit.nsm")
        self.refused = 0
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with unix_address(path) as addr:
            sock.bind(addr)
        os.chmod(path, 0o600)  # before listen(): until then nobody can connect at all
        sock.listen(64)
        super().__init__(sock)

    def _admit(self, conn: socket.socket) -> bool:
        try:
            reason = self.peer_check(conn)
        except Exception as exc:  # noqa: BLE001 - a check that breaks refuses, never admits
            reason = f"peer check failed: {type(exc).__name__}: {exc}"
        if reason is None:
            return True
        self.refused += 1
        self.log.warning("NSM: refused a connection to %s from %s", self.path.name, reason)
        return False

    def serve(self, conn: socket.socket, addr: object) -> None:
        with conn:
            if not self._admit(conn):
                return
            while True:
                try:
                    raw = recv_frame(conn, 1 << 20)
                except (ConnectionError, OSError, NsmMessageError):
                    return
                try:
                    send_frame(conn, self.device.handle_bytes(raw))
                except OSError:
                    return

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
