"""The emulator's attestation PKI: P-384 root -> regional intermediate -> 3-hour leaf per enclave.

It mirrors the shape of AWS's chain (docs/reference/nitro-attestation-nsm-eif.md §2.3) so the
emulator's documents exercise the same verifier paths as real ones: a root without pathLen,
a CA intermediate with pathLen 0 and keyCertSign, and a non-CA leaf with digitalSignature whose
CN is `<module_id>.<region>.aws`. The root is made once per state directory and never replaced;
the intermediate is renewed before it expires. Files live under `state_dir/pki/` (private keys
mode 0600); creation is serialized with a lock file so concurrent processes agree on one root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclavekit.attestation import TrustAnchor
from enclavekit.errors import EmulatorError, InvalidInput

ROOT_VALIDITY = timedelta(days=30 * 365)
INTERMEDIATE_VALIDITY = timedelta(days=30)
INTERMEDIATE_RENEW_BEFORE = timedelta(days=7)
LEAF_VALIDITY = timedelta(hours=3)
ROOT_CN = "enclavekit-local.nitro-enclaves"
_ORG = [
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclavekit"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "local emulator"),
]


def _name(cn: str) -> x509.Name:
    return x509.Name([*_ORG, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf (the NSM's signing key) signs documents."""
    unused = ("key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, start: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _save_pair(
    key_path: Path, cert_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    """The key (PKCS#8) and its certificate as PEM files only their owner reads (0600)."""
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o600)


def _load_pair(
    key_path: Path, cert_path: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"local PKI {cert_path.parent}: expected a readable key {key_path.name} and "
            f"certificate {cert_path.name}, found {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise InvalidInput(
            f"local PKI {cert_path.parent}: expected {key_path.name} to be the P-384 key of "
            f"{cert_path.name}, found a different key"
        )
    return key, cert


class LocalPki:
    """The local root and regional intermediate of one state dir; issues enclave leaves."""

    def __init__(
        self,
        directory: Path,
        region: str,
        root: x509.Certificate,
        intermediate_key: ec.EllipticCurvePrivateKey,
        intermediate: x509.Certificate,
    ) -> None:
        self.directory = directory
        self.region = region
        self._root = root
        self._intermediate_key = intermediate_key
        self._intermediate = intermediate

    @classmethod
    def load_or_create(cls, state_dir: str | Path, *, region: str = "us-east-1") -> LocalPki:
        """Load `state_dir/pki/`, creating the root once and renewing the intermediate if due."""
        directory = Path(state_dir) / "pki"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise EmulatorError(f"local PKI: cannot create {directory}: {exc.strerror}") from None
        with _locked(directory):
            root_key, root = cls._root_pair(directory)
            inter_key, inter = cls._intermediate_pair(directory, region, root_key, root)
        return cls(directory, region, root, inter_key, inter)

    @staticmethod
    def _root_pair(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = directory / "root.key", directory / "root.pem"
        if cert_path.exists():
            return _load_pair(key_path, cert_path)
        key = _new_key()
        start = _now()
        name = _name(ROOT_CN)
        cert = (
            _builder(name, name, key.public_key(), start)
            .not_valid_after(start + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA384())
        )
        _save_pair(key_path, cert_path, key, cert)
        return key, cert

    @staticmethod
    def _intermediate_pair(
        directory: Path,
        region: str,
        root_key: ec.EllipticCurvePrivateKey,
        root: x509.Certificate,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = directory / "regional.key", directory / "regional.pem"
        now = _now()
        if cert_path.exists():
            key, cert = _load_pair(key_path, cert_path)
            fresh = cert.not_valid_after_utc - now > INTERMEDIATE_RENEW_BEFORE
            if fresh and cert.issuer == root.subject:
                return key, cert
        key = _new_key()
        cn = f"{secrets.token_hex(8)}.{region}.local.nitro-enclaves"
        cert = (
            _builder(_name(cn), root.subject, key.public_key(), now)
            .not_valid_after(now + INTERMEDIATE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA384())
        )
        _save_pair(key_path, cert_path, key, cert)
        return key, cert

    def issue_leaf(
        self, module_id: str, *, now: datetime | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """A fresh P-384 key and its 3-hour leaf certificate (DER) for one enclave's NSM."""
        if not isinstance(module_id, str) or not module_id:
            raise InvalidInput(f"leaf module_id: expected non-empty text, found {module_id!r}")
        start = (now or _now()).astimezone(UTC).replace(microsecond=0)
        end = min(start + LEAF_VALIDITY, self._intermediate.not_valid_after_utc)
        key = _new_key()
        cert = (
            _builder(
                _name(f"{module_id}.{self.region}.aws"),
                self._intermediate.subject,
                key.public_key(),
                start,
            )
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=False)
            .sign(self._intermediate_key, hashes.SHA384())
        )
        return key, cert.public_bytes(serialization.Encoding.DER)

    @property
    def cabundle(self) -> list[bytes]:
        """[root, intermediate] in DER, the order the NSM puts them in a document."""
        der = serialization.Encoding.DER
        return [self._root.public_bytes(der), self._intermediate.public_bytes(der)]

    @property
    def root_pem(self) -> bytes:
        """The root certificate in PEM, to hand to verifiers (`--trust PEMFILE`)."""
        return self._root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_path(self) -> Path:
        """Where the exported root PEM lives."""
        return self.directory / "root.pem"

    def trust_anchor(self) -> TrustAnchor:
        """The local root as the (only) anchor for documents of this emulator."""
        return TrustAnchor.from_pem(self.root_pem, name=f"local root ({self.root_path})")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
