"""CMS EnvelopedData of CiphertextForRecipient, checked against the system OpenSSL both ways."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit import cms
from enclavekit.errors import CmsFormatError, InvalidInput

OPENSSL = "/usr/bin/openssl"
PLAINTEXT = b"-----BEGIN PRIVATE KEY-----\n\x00\xff binary \r\n" * 40


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, key: rsa.RSAPrivateKey) -> Path:
    """key.pem and a self-signed cert.pem (with SKI) for openssl's -recip / -inkey."""
    assert shutil.which(OPENSSL), "the system openssl is required for the independent check"
    d = tmp_path_factory.mktemp("cms")
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "plain").write_bytes(PLAINTEXT)
    return d


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OPENSSL, "cms", *args], capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("chunk", [None, 1, 16, 1000])
def test_openssl_opens_what_we_build(
    files: Path, key: rsa.RSAPrivateKey, chunk: int | None
) -> None:
    blob = cms.build_enveloped(PLAINTEXT, key.public_key(), chunk=chunk)
    assert blob[:2] == (b"\x30\x80" if chunk else b"\x30\x82")
    (files / "ours.der").write_bytes(blob)
    out = _openssl(
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        str(files / "ours.der"),
        "-inkey",
        str(files / "key.pem"),
        "-binary",
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == PLAINTEXT
    assert cms.open_enveloped(blob, key) == PLAINTEXT


@pytest.mark.parametrize("stream", [False, True])
def test_we_open_what_openssl_builds(files: Path, key: rsa.RSAPrivateKey, stream: bool) -> None:
    out = _openssl(
        "-encrypt", "-binary", "-in", str(files / "plain"), "-outform", "DER",
        "-recip", str(files / "cert.pem"),
        "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
        "-keyopt", "rsa_mgf1_md:sha256", "-aes-256-cbc", "-keyid",
        *(["-stream"] if stream else []),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    blob = out.stdout
    assert blob[:2] == (b"\x30\x80" if stream else b"\x30\x82")  # BER indefinite vs DER
    assert cms.open_enveloped(blob, key) == PLAINTEXT


def test_openssl_sha1_oaep_defaults_are_refused(files: Path, key: rsa.RSAPrivateKey) -> None:
    out = _openssl(
        "-encrypt", "-binary", "-in", str(files / "plain"), "-outform", "DER",
        "-recip", str(files / "cert.pem"), "-keyopt", "rsa_padding_mode:oaep",
        "-aes-256-cbc", "-keyid",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    with pytest.raises(CmsFormatError, match="SHA-1 defaults"):
        cms.open_enveloped(out.stdout, key)


def test_structure_of_what_we_build(key: rsa.RSAPrivateKey) -> None:
    blob = cms.build_enveloped(b"x", key.public_key())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert b"\x80\x14" + ski in blob  # rid [0] IMPLICIT subjectKeyIdentifier
    assert bytes.fromhex("06092a864886f70d010703") in blob  # envelopedData
    assert bytes.fromhex("06092a864886f70d010107") in blob  # rsaesOaep
    assert bytes.fromhex("060960864801650304012a") in blob  # aes256-CBC
    assert blob.count(bytes.fromhex("0609608648016503040201")) == 2  # sha256 twice: hash, MGF1


def test_wrong_key_and_damage_are_format_errors(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    blob = cms.build_enveloped(PLAINTEXT, key.public_key(), chunk=64)
    with pytest.raises(CmsFormatError, match="not encrypted to this key"):
        cms.open_enveloped(blob, other_key)
    for cut in range(0, len(blob), 7):
        with pytest.raises(CmsFormatError):
            cms.open_enveloped(blob[:cut], key)
    with pytest.raises(CmsFormatError, match="extra bytes"):
        cms.open_enveloped(blob + b"\x00", key)
    with pytest.raises(InvalidInput, match="RSA private key"):
        cms.open_enveloped(blob, key.public_key())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="chunk"):
        cms.build_enveloped(b"x", key.public_key(), chunk=0)


def _replace(blob: bytes, old: str, new: str) -> bytes:
    assert bytes.fromhex(old) in blob
    return blob.replace(bytes.fromhex(old), bytes.fromhex(new), 1)


def test_each_field_is_checked(key: rsa.RSAPrivateKey) -> None:
    blob = cms.build_enveloped(b"x" * 20, key.public_key())
    cases = [
        # EnvelopedData version 2 -> 0 (first INTEGER 2 after the [0] wrapper)
        (_replace(blob, "0201023182", "0201003182"), "EnvelopedData version: expected 2"),
        (_replace(blob, "06092a864886f70d010703", "06092a864886f70d010701"), "contentType"),
        (
            _replace(blob, "060960864801650304012a", "0609608648016503040116"),
            "contentEncryptionAlgorithm",
        ),
        (_replace(blob, "06092a864886f70d010107", "06092a864886f70d010101"), "keyEncryption"),
        (_replace(blob, "06092a864886f70d010108", "06092a864886f70d010109"), "maskGen"),
        (_replace(blob, "0201028014", "0201008014"), "KeyTransRecipientInfo version"),
    ]
    for damaged, match in cases:
        with pytest.raises(CmsFormatError, match=match):
            cms.open_enveloped(damaged, key)


def test_nested_constructed_octet_chunks(key: rsa.RSAPrivateKey) -> None:
    """BER allows constructed OCTET STRINGs inside the chunk list; they concatenate."""
    blob = cms.build_enveloped(b"y" * 40, key.public_key(), chunk=16)
    # wrap the first 16-byte chunk (04 10 ...) in a constructed OCTET STRING (24 80 ... 00 00)
    start = blob.index(b"\xa0\x80\x04\x10") + 2
    nested = (
        blob[:start] + b"\x24\x80" + blob[start : start + 18] + b"\x00\x00" + blob[start + 18 :]
    )
    assert cms.open_enveloped(nested, key) == b"y" * 40


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=300), st.none() | st.integers(1, 64))
def test_round_trip(key: rsa.RSAPrivateKey, plaintext: bytes, chunk: int | None) -> None:
    assert (
        cms.open_enveloped(cms.build_enveloped(plaintext, key.public_key(), chunk=chunk), key)
        == plaintext
    )


_SAMPLE: list[bytes] = []


def _sample(key: rsa.RSAPrivateKey) -> bytes:
    if not _SAMPLE:
        _SAMPLE.append(cms.build_enveloped(b"z" * 33, key.public_key(), chunk=8))
    return _SAMPLE[0]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_opener_raises_only_our_error(key: rsa.RSAPrivateKey, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = bytearray(_sample(key))
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        raw = bytes(raw[:cut])
    try:
        cms.open_enveloped(raw, key)
    except CmsFormatError as exc:
        assert "\n" not in str(exc)
