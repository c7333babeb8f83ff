"""What the enclave holds and does: provisioning, refresh, challenges, status.

State lives only in this process's memory. A Provision brings credentials, the certificate
bundle and secret ciphertexts; everything secret is obtained by attested KMS Decrypt and never
leaves: the TLS key goes into the TLS server, secrets answer HMAC challenges.

States: ``waiting`` (no Provision yet) -> ``provisioning`` -> ``ready``. A refresh (every
`refresh_interval_secs`, or a new Provision) re-decrypts with fresh attestation documents.

Each item (every secret, and the certificate's private key) is obtained on its own, so one
denied item does not cost the others (on AWS, ACM's key is released only to ACM's own enclave
image while our secrets are ours). Some items obtained, some not: ``degraded``, serving what
was obtained, `last_error` naming each missing item and its cause. On a refresh, an item KMS
*answers* with an error for (the key policy no longer releases it: revoked) is dropped, as
the ACM agent removes its token when a refresh decrypt fails; an item KMS cannot be *reached*
for keeps its old value. Nothing left at all: ``failed``. A Provision of which nothing could
be obtained never takes away what an earlier one gave.
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
from .kms import AttestedKms, KmsDenied, KmsUnreachable
from .tls import ServerIdentity, TlsServer, load_identity

log = logging.getLogger(__name__)


CERTIFICATE_ITEM = "certificate key"


@dataclass(frozen=True)
class Material:
    """Everything secret the enclave holds, from one or more rounds of attested decrypts."""

    identity: ServerIdentity | None
    secrets: dict[str, bytes] = field(repr=False)

    @property
    def empty(self) -> bool:
        return self.identity is None and not self.secrets


@dataclass(frozen=True)
class ItemFailure:
    """One item a round of decrypts did not obtain, and why (never any key material)."""

    item: str  # "certificate key" or "secret 'name'"
    error: EnclaveAppError | InvalidInput

    @property
    def revoked(self) -> bool:
        """KMS answered no: the key policy does not release this item (any more)."""
        return isinstance(self.error, KmsDenied)

    def describe(self) -> str:
        return f"{self.item}: {self.error}"


@dataclass(frozen=True)
class Round:
    """What one round of per-item decrypts came to."""

    material: Material
    failures: tuple[ItemFailure, ...]
    requested: int

    @property
    def nothing_obtained(self) -> bool:
        return self.requested > 0 and len(self.failures) == self.requested

    def reason(self) -> str:
        return "; ".join(f.describe() for f in self.failures)


def _secret_item(name: str) -> str:
    return f"secret {name!r}"


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
        kms_verify: bool | str = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.attester = attester
        self.key = key
        self.vsock = vsock
        self.module_id = module_id
        self.tls = tls
        if kms_verify is False:  # the one thing KMS's identity rests on: never switched off
            raise InvalidInput("kms_verify: expected True or a CA bundle path, got False")
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
        """Take the parent's configuration and obtain the secret material with attestation.

        Every item is obtained on its own: all -> ``ready``; some -> ``degraded`` (what was
        obtained is served, a failed item keeps what an earlier Provision gave for it); none ->
        an Error reply, and the enclave keeps whatever it held (``failed`` if nothing).
        """
        log.info(
            "Provision received: region %s, KMS https://%s via vsock port %d, certificate %s, "
            "secrets %s, refresh every %d s",
            msg.region,
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
                got = self._obtain(msg, self._connect(msg))
            except (EnclaveAppError, InvalidInput) as exc:
                got = Round(Material(None, {}), (ItemFailure("KMS client", exc),), 1)
            if got.nothing_obtained:
                # A failed Provision never takes away what a good one gave (the refresh loop
                # notices a real revocation); it only fails an enclave that has nothing yet.
                reason = got.reason()
                self._nothing_obtained(reason, drop=self._material is None)
                kms = any(isinstance(f.error, EnclaveAppError) for f in got.failures)
                return ErrorReply("KmsError" if kms else "BadRequest", reason)
            now = self.clock()
            with self._lock:
                material = _merge(got, self._material, keep=lambda f: True)
                state = "degraded" if got.failures else "ready"
                self._provision = msg
                self._material = material
                self._state = state
                self._provisioned_at = self._refreshed_at = now
                self._last_error = got.reason() or None
            self._install(material)
        self._schedule()
        fp = material.identity.certificate_sha256 if material.identity else None
        log.info(
            "provisioned: certificate %s, secrets %s (%s)",
            fp or "none",
            sorted(material.secrets) or "none",
            state,
        )
        return Provisioned(state, fp, tuple(sorted(material.secrets)))

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
        """Re-decrypt every item with fresh attestation documents. True if all came back.

        An item KMS refuses (revoked) is dropped; one KMS cannot be reached for keeps its old
        value. Nothing left -> ``failed``; some items missing -> ``degraded``.
        """
        with self._work:
            with self._lock:
                msg = self._provision
            if msg is None:
                return False
            try:
                got = self._obtain(msg, self._connect(msg))
            except (EnclaveAppError, InvalidInput) as exc:
                got = Round(Material(None, {}), (ItemFailure("KMS client", exc),), 1)
            with self._lock:
                if any(f.item == "KMS client" for f in got.failures):
                    material = self._material or Material(None, {})  # nothing was asked
                else:
                    material = _merge(got, self._material, keep=lambda f: not f.revoked)
                if material.empty and got.requested:
                    self._material = None
                    self._state = "failed"
                else:
                    self._material = material
                    self._state = "degraded" if got.failures else "ready"
                if not got.nothing_obtained:
                    self._refreshed_at = self.clock()
                    self._refresh_count += 1
                self._last_error = got.reason() or None
                state, count = self._state, self._refresh_count
            self._install(material)
        if got.failures:
            log.error(
                "refresh: %s (%s, certificate %s, secrets %s)",
                got.reason(),
                state,
                "kept" if material.identity else "none",
                sorted(material.secrets) or "none",
            )
            return False
        log.info("refreshed with fresh attestation (refresh #%d)", count)
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
        """The KMS client for `msg`: TLS to the region's KMS host through the parent's proxy.

        Always TLS, always to `kms.<region>.amazonaws.com`, always verified against the trust
        store the enclave was started with (`kms_verify`): the parent only carries the bytes.
        """
        target = f"{msg.kms_host}:443"
        with self._lock:
            fw = self._forwarder
            stale = fw is not None and (fw.port, fw.connect_target) != (msg.kms_proxy_port, target)
            if stale or fw is None:
                old, self._forwarder = fw, None
            else:
                old = None
        if old is not None:
            old.stop()
        if fw is None or stale:
            fw = LoopbackForwarder(
                self.vsock, PARENT_CID, msg.kms_proxy_port, connect_target=target
            ).start()
            with self._lock:
                self._forwarder = fw
        endpoint, proxy = f"https://{msg.kms_host}", fw.proxy_url
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

    def _obtain(self, msg: Provision, kms: AttestedKms) -> Round:
        """Decrypt each requested item on its own; a failure costs only that item.

        Once KMS could not be reached, the remaining items are not tried (each would wait for
        the same timeout) and fail with that cause.
        """
        secrets: dict[str, bytes] = {}
        failures: list[ItemFailure] = []
        unreachable: KmsUnreachable | None = None
        for spec in msg.secrets:
            item = _secret_item(spec.name)
            if unreachable is not None:
                failures.append(ItemFailure(item, unreachable))
                continue
            try:
                secrets[spec.name] = kms.decrypt(spec.ciphertext, key_id=spec.key_id)
            except (EnclaveAppError, InvalidInput) as exc:
                failures.append(ItemFailure(item, exc))
                unreachable = exc if isinstance(exc, KmsUnreachable) else None
                log.warning("%s not obtained: %s", item, exc)
                continue
            log.info(
                "secret %r decrypted with attestation (%d bytes)",
                spec.name,
                len(secrets[spec.name]),
            )
        identity = None
        if msg.certificate is not None:
            if unreachable is not None:
                failures.append(ItemFailure(CERTIFICATE_ITEM, unreachable))
            else:
                try:
                    identity = self._load_certificate(msg, kms)
                except (EnclaveAppError, InvalidInput) as exc:
                    failures.append(ItemFailure(CERTIFICATE_ITEM, exc))
                    log.warning("%s not obtained: %s", CERTIFICATE_ITEM, exc)
        requested = len(msg.secrets) + (msg.certificate is not None)
        return Round(Material(identity=identity, secrets=secrets), tuple(failures), requested)

    def _load_certificate(self, msg: Provision, kms: AttestedKms) -> ServerIdentity:
        assert msg.certificate is not None
        key_pem = kms.decrypt(msg.certificate.private_key_ciphertext)
        try:
            identity = load_identity(
                msg.certificate.certificate, msg.certificate.certificate_chain, key_pem
            )
        finally:
            del key_pem
        log.info(
            "certificate %s (%s) loaded; private key decrypted with attestation and "
            "kept in enclave memory",
            identity.certificate_sha256,
            identity.subject,
        )
        return identity

    def _install(self, material: Material) -> None:
        if self.tls is not None:
            self.tls.set_identity(material.identity)

    def _nothing_obtained(self, reason: str, *, drop: bool) -> None:
        """A Provision got nothing: fail an enclave that holds nothing, else keep its material."""
        with self._lock:
            self._last_error = reason
            if drop:
                self._material = None
                self._state = "failed"
            else:
                self._state = "degraded"
        if drop:
            self._install(Material(identity=None, secrets={}))
        log.error(
            "%s: %s", "failed, nothing obtained" if drop else "degraded, material kept", reason
        )


def _merge(
    got: Round, earlier: Material | None, *, keep: Callable[[ItemFailure], bool]
) -> Material:
    """What `got` obtained, plus the earlier value of each failed item `keep` accepts."""
    secrets = dict(got.material.secrets)
    identity = got.material.identity
    if earlier is not None:
        for failure in got.failures:
            if not keep(failure):
                continue
            if failure.item == CERTIFICATE_ITEM:
                identity = earlier.identity
            else:
                for name, value in earlier.secrets.items():
                    if failure.item == _secret_item(name):
                        secrets[name] = value
    return Material(identity=identity, secrets=secrets)
