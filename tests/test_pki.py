"""Local emulator PKI: one root per state dir, AWS-like chain shape, private keys kept private."""

from __future__ import annotations

import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit import attestation as att
from enclavekit.errors import AttestationError, InvalidInput
from enclavekit.pki import LEAF_VALIDITY, LocalPki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki.load_or_create(tmp_path_factory.mktemp("state"))


def test_files_and_modes(pki: LocalPki) -> None:
    names = {p.name for p in pki.directory.iterdir()}
    assert {"root.pem", "root.key", "regional.pem", "regional.key"} <= names
    for key in ("root.key", "regional.key"):
        assert stat.S_IMODE((pki.directory / key).stat().st_mode) == 0o600
    assert pki.root_path.read_bytes() == pki.root_pem


def test_root_is_created_once(pki: LocalPki) -> None:
    again = LocalPki.load_or_create(pki.directory.parent)
    assert again.cabundle == pki.cabundle
    assert again.trust_anchor() == att.TrustAnchor.local(pki.directory.parent)


def test_concurrent_creators_agree_on_one_root(tmp_path: Path) -> None:
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(LocalPki.load_or_create(tmp_path).root_pem))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1


def test_chain_shape_mirrors_aws(pki: LocalPki) -> None:
    _, leaf_der = pki.issue_leaf("i-0123456789abcdef0-enc0123456789abcdef")
    root, regional = (x509.load_der_x509_certificate(d) for d in pki.cabundle)
    leaf = x509.load_der_x509_certificate(leaf_der)
    for cert in (root, regional, leaf):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha384"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    bc = regional.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = regional.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert not ku.critical and ku.value.digital_signature and ku.value.content_commitment
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "i-0123456789abcdef0-enc0123456789abcdef.us-east-1.aws"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == LEAF_VALIDITY
    assert pki.cabundle[0] != att.TrustAnchor.aws().certificate
    assert "local" in root.subject.rfc4514_string()


def test_leaf_lifetime_is_enforced_by_verify(pki: LocalPki) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    key, cert = pki.issue_leaf("m", now=start)
    raw = att.encode(
        module_id="m",
        pcrs={0: bytes(48)},
        signing_key=key,
        certificate=cert,
        cabundle=pki.cabundle,
        timestamp=int(start.timestamp() * 1000) + 5,
    )
    anchor = pki.trust_anchor()
    att.verify(raw, anchor, start + timedelta(hours=2, minutes=59))
    with pytest.raises(AttestationError, match="leaf certificate"):
        att.verify(raw, anchor, start + LEAF_VALIDITY + timedelta(seconds=1))


def test_expiring_intermediate_is_renewed_root_kept(tmp_path: Path) -> None:
    first = LocalPki.load_or_create(tmp_path)
    regional = x509.load_pem_x509_certificate((first.directory / "regional.pem").read_bytes())
    # Pretend time passed: rewrite the regional cert as one about to expire (same key).
    root_key = (first.directory / "root.key").read_bytes()
    from cryptography.hazmat.primitives import hashes, serialization

    signer = serialization.load_pem_private_key(root_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    short = (
        x509.CertificateBuilder()
        .subject_name(regional.subject)
        .issuer_name(regional.issuer)
        .public_key(regional.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=29))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(signer, hashes.SHA384())
    )
    (first.directory / "regional.pem").write_bytes(short.public_bytes(serialization.Encoding.PEM))
    second = LocalPki.load_or_create(tmp_path)
    assert second.cabundle[0] == first.cabundle[0]
    renewed = x509.load_der_x509_certificate(second.cabundle[1])
    assert renewed.not_valid_after_utc - now > timedelta(days=20)


def test_broken_state_is_reported(tmp_path: Path) -> None:
    LocalPki.load_or_create(tmp_path)
    (tmp_path / "pki" / "root.key").write_bytes(b"not a key")
    with pytest.raises(InvalidInput, match="root.key"):
        LocalPki.load_or_create(tmp_path)
    with pytest.raises(InvalidInput, match="expected the emulator root"):
        att.TrustAnchor.local(tmp_path / "elsewhere")
