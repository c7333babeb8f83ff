"""What the enclave holds and does: provisioning, refresh, challenges, status.

State lives only in this process's memory. A Provision brings credentials, the certificate
bundle and secret ciphertexts; everything secret is obtained by attested KMS Decrypt and never
leaves: the TLS key goes into the TLS server, secrets answer HMAC challenges.

States: ``waiting`` (no Provision yet) -> ``provisioning`` -> ``ready``. A refresh (every
`refresh_interval_secs`, or a new Provision) re-decrypts with fresh attestation documents.
If KMS *answers* with an error (the key policy no longer releases the key: revoked) the
material is dropped and the state is ``failed``, as the ACM agent removes its token when a
refresh decrypt fails; if KMS cannot be *reached*, the old material is kept and the state is
``degraded`` until a later refresh succeeds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from enclavekit.errors import EnclaveAppError, EnclaveKitError, InvalidInput
from enclavekit.provisioning import (
    Attest,
    AttestResult,
    Challenge,
    ChallengeAnswer,
    ErrorReply,
    Message,
    Provision,
    Provisioned,
    Status,
    StatusReport,
)
from enclavekit.transport import PARENT_CID, VsockTransport

from .attester import Attester
from .forwarder import LoopbackForwarder
from .keys import RecipientKey
from .kms import AttestedKms, KmsDenied
from .tls import ServerIdentity, TlsServer, load_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Material:
    """Everything secret the enclave obtained from one round of attested decrypts."""

    identity: ServerIdentity | None
    secrets: dict[str, bytes] = field(repr=False)


KmsFactory = Callable[[Provision, str, str | None], AttestedKms]


class EnclaveService:
    """Serves the control protocol's requests; owns the KMS path, the secrets and refresh."""

    def __init__(
        self,
        *,
        attester: Attester,
        key: RecipientKey,
        vsock: VsockTransport,
        module_id: str,
        tls: TlsServer | None = None,
        kms_verify: bool | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.attester = attester
        self.key = key
        self.vsock = vsock
        self.module_id = module_id
        self.tls = tls
        self.kms_verify = kms_verify
        self.clock = clock
        self._state = "waiting"
        self._lock = threading.Lock()  # guards the fields below
        self._work = threading.Lock()  # one provision / refresh at a time
        self._provision: Provision | None = None
        self._material: Material | None = None
        self._forwarder: LoopbackForwarder | None = None
        self._kms: AttestedKms | None = None
        self._provisioned_at: float | None = None
        self._refreshed_at: float | None = None
        self._refresh_count = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refresher: threading.Thread | None = None

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Message) -> Message:
        """One control request -> one reply; failures become an Error reply with the cause."""
        try:
            match request:
                case Provision():
                    return self.provision(request)
                case Status():
                    return self.status()
                case Challenge():
                    return self.challenge(request)
                case Attest():
                    return AttestResult(
                        self.attester.attest(public_key=self.key.spki_der, nonce=request.nonce)
                    )
            return ErrorReply(
                "BadRequest",
                f"control request: expected one of Provision, "
                f"Status, Challenge, Attest, found {request.TYPE}",
            )
        except InvalidInput as exc:
            return ErrorReply("BadRequest", str(exc))
        except EnclaveAppError as exc:
            return ErrorReply("KmsError", str(exc))
        except EnclaveKitError as exc:
            return ErrorReply("Internal", str(exc))

    # ------------------------------------------------------------------ requests

    def provision(self, msg: Provision) -> Provisioned | ErrorReply:
        """Take the parent's configuration and obtain the secret material with attestation."""
        log.info(
            "Provision received: region %s, KMS %s://%s via vsock port %d, certificate %s, "
            "secrets %s, refresh every %d s",
            msg.region,
            msg.kms_endpoint_scheme,
            msg.kms_host,
            msg.kms_proxy_port,
            "yes" if msg.certificate else "no",
            [s.name for s in msg.secrets] or "none",
            msg.refresh_interval_secs,
        )
        with self._work:
            with self._lock:
                if self._state in ("waiting", "failed"):
                    self._state = "provisioning"
            try:
                kms = self._connect(msg)
                material = self._obtain(msg, kms)
            except EnclaveAppError as exc:
                # A failed Provision never takes away what a good one gave (the refresh loop
                # notices a real revocation); it only fails an enclave that has nothing yet.
                self._failed(exc, revoked=self._material is None)
                return ErrorReply("KmsError", str(exc))
            except InvalidInput as exc:
                self._failed(exc, revoked=self._material is None)
                return ErrorReply("BadRequest", str(exc))
            now = self.clock()
            with self._lock:
                self._provision = msg
                self._material = material
                self._state = "ready"
                self._provisioned_at = self._refreshed_at = now
                self._last_error = None
            self._install(material)
        self._schedule()
        fp = material.identity.certificate_sha256 if material.identity else None
        log.info(
            "provisioned: certificate %s, secrets %s",
            fp or "none",
            sorted(material.secrets) or "none",
        )
        return Provisioned("ready", fp, tuple(sorted(material.secrets)))

    def status(self) -> StatusReport:
        with self._lock:
            identity = self._material.identity if self._material else None
            return StatusReport(
                state=self._state,
                module_id=self.module_id,
                public_key_sha256=self.key.fingerprint,
                certificate_sha256=identity.certificate_sha256 if identity else None,
                certificate_subject=identity.subject if identity else None,
                certificate_not_after=identity.not_after if identity else None,
                secrets=tuple(sorted(self._material.secrets)) if self._material else (),
                provisioned_at=self._provisioned_at,
                refreshed_at=self._refreshed_at,
                refresh_count=self._refresh_count,
                last_error=self._last_error,
            )

    def challenge(self, msg: Challenge) -> ChallengeAnswer | ErrorReply:
        """HMAC-SHA256(secret, nonce): proves we hold the secret without revealing it."""
        with self._lock:
            if self._material is None:
                return ErrorReply(
                    "NotProvisioned",
                    f"secret {msg.name!r}: expected a provisioned enclave, found "
                    f"state {self._state}",
                )
            secret = self._material.secrets.get(msg.name)
            known = sorted(self._material.secrets)
        if secret is None:
            return ErrorReply(
                "UnknownSecret", f"secret {msg.name!r}: expected one of {known}, found no such name"
            )
        return ChallengeAnswer(msg.name, hmac.new(secret, msg.nonce, hashlib.sha256).digest())

    # ------------------------------------------------------------------ refresh

    def refresh(self) -> bool:
        """Re-decrypt everything with fresh attestation documents. True on success."""
        with self._work:
            with self._lock:
                msg = self._provision
            if msg is None:
                return False
            try:
                material = self._obtain(msg, self._connect(msg))
            except (EnclaveAppError, InvalidInput) as exc:
                self._failed(exc, revoked=isinstance(exc, KmsDenied))
                return False
            with self._lock:
                self._material = material
                self._state = "ready"
                self._refreshed_at = self.clock()
                self._refresh_count += 1
                self._last_error = None
            self._install(material)
        log.info("refreshed with fresh attestation (refresh #%d)", self._refresh_count)
        return True

    def _schedule(self) -> None:
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_loop, daemon=True, name="refresh"
            )
            self._refresher.start()
        else:
            self._wake.set()  # a new Provision: restart the interval

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                interval = self._provision.refresh_interval_secs if self._provision else 60
            woke = self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not woke:
                self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        with self._lock:
            forwarder, kms = self._forwarder, self._kms
            self._forwarder = self._kms = None
        if kms is not None:
            kms.close()
        if forwarder is not None:
            forwarder.stop()

    # ------------------------------------------------------------------ internals

    def _connect(self, msg: Provision) -> AttestedKms:
        """The KMS client for `msg`, with the loopback forwarder to the parent's vsock-proxy."""
        mode = "connect" if msg.kms_endpoint_scheme == "https" else "pipe"
        target = f"{msg.kms_host}:443" if mode == "connect" else None
        with self._lock:
            fw = self._forwarder
            stale = fw is not None and (fw.port, fw.mode, fw.connect_target) != (
                msg.kms_proxy_port,
                mode,
                target,
            )
            if stale or fw is None:
                old, self._forwarder = fw, None
            else:
                old = None
        if old is not None:
            old.stop()
        if fw is None or stale:
            fw = LoopbackForwarder(
                self.vsock, PARENT_CID, msg.kms_proxy_port, mode=mode, connect_target=target
            ).start()
            with self._lock:
                self._forwarder = fw
        if mode == "connect":
            endpoint, proxy = f"https://{msg.kms_host}", fw.proxy_url
        else:
            endpoint, proxy = fw.proxy_url, None
        kms = AttestedKms(
            attester=self.attester,
            key=self.key,
            region=msg.region,
            credentials=msg.credentials,
            endpoint_url=endpoint,
            proxy_url=proxy,
            verify=self.kms_verify,
        )
        with self._lock:
            old_kms, self._kms = self._kms, kms
        if old_kms is not None:
            old_kms.close()
        return kms

    def _obtain(self, msg: Provision, kms: AttestedKms) -> Material:
        secrets: dict[str, bytes] = {}
        for spec in msg.secrets:
            secrets[spec.name] = kms.decrypt(spec.ciphertext, key_id=spec.key_id)
            log.info(
                "secret %r decrypted with attestation (%d bytes)",
                spec.name,
                len(secrets[spec.name]),
            )
        identity = None
        if msg.certificate is not None:
            key_pem = kms.decrypt(msg.certificate.private_key_ciphertext)
            identity = load_identity(
                msg.certificate.certificate, msg.certificate.certificate_chain, key_pem
            )
            del key_pem
            log.info(
                "certificate %s (%s) loaded; private key decrypted with attestation and "
                "kept in enclave memory",
                identity.certificate_sha256,
                identity.subject,
            )
        return Material(identity=identity, secrets=secrets)

    def _install(self, material: Material) -> None:
        if self.tls is not None:
            self.tls.set_identity(material.identity)

    def _failed(self, exc: Exception, *, revoked: bool) -> None:
        reason = str(exc)
        with self._lock:
            self._last_error = reason
            if revoked:
                self._material = None
                self._state = "failed"
            else:
                self._state = "degraded"
        if revoked:
            self._install(Material(identity=None, secrets={}))
        log.error(
            "%s: %s", "failed, material dropped" if revoked else "degraded, material kept", reason
        )
