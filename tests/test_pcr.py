"""PCR helpers: vectors from the AWS user guide and from real attestation documents."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclavekit.errors import InvalidInput
from enclavekit.pcr import (
    HASH_ALGORITHM,
    PCR_LEN,
    Measurements,
    extend,
    pcr3_of_role_arn,
    pcr4_of_instance_id,
    pcr8_of_certificate,
    pcr_of_content,
    pcr_of_digest,
)

ROOT_PEM = (
    Path(__file__).resolve().parent.parent
    / "enclavekit"
    / "data"
    / ("aws_nitro_enclaves_root_g1.pem")
)


def test_extend_is_sha384_of_old_and_data() -> None:
    old = bytes(range(48))
    assert extend(old, b"abc") == hashlib.sha384(old + b"abc").digest()
    assert len(extend(bytes(PCR_LEN), b"")) == PCR_LEN


def test_extend_rejects_wrong_length_pcr() -> None:
    with pytest.raises(InvalidInput, match="expected 48 bytes, found 47"):
        extend(bytes(47), b"x")


def test_pcr_of_digest_and_content() -> None:
    digest = hashlib.sha384(b"kernel" + b"cmdline").digest()
    expected = hashlib.sha384(b"\0" * 48 + digest).digest()
    assert pcr_of_digest(digest) == expected
    assert pcr_of_content(b"kernel", b"cmdline") == expected
    with pytest.raises(InvalidInput, match="digest: expected 48 bytes, found 32"):
        pcr_of_digest(hashlib.sha256(b"").digest())


def test_pcr3_user_guide_vector() -> None:
    assert pcr3_of_role_arn("arn:aws:iam::123456789012:role/Webserver").hex() == (
        "78fce75db17cd4e0a3fb8dad3ad128ca5e77edbb2b2c7f75329dccd99aa5f6ef"
        "4fc1f1a452e315b9e98f9e312e6921e6"
    )


def test_pcr4_user_guide_vector() -> None:
    assert pcr4_of_instance_id("i-1234567890abcdef0").hex() == (
        "08f996b5d43e047a9eb51e7f548bfee7e164fd7dc8f65541f2ac09d6545ac812"
        "719327281c401a67a10fcba87ae79ce0"
    )


@pytest.mark.parametrize(
    "bad", ["", "arn:aws:iam::123:role/x", "arn:aws:iam::123456789012:user/x", "Webserver"]
)
def test_pcr3_rejects_non_role_arns(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"IAM role ARN: expected arn:aws:iam::"):
        pcr3_of_role_arn(bad)


@pytest.mark.parametrize("bad", ["", "i-123", "i-1234567890ABCDEF0", "1234567890abcdef0"])
def test_pcr4_rejects_non_instance_ids(bad: str) -> None:
    with pytest.raises(InvalidInput, match="EC2 instance id: expected i- followed by"):
        pcr4_of_instance_id(bad)


def test_pcr4_of_every_real_document(attestation_data: Path) -> None:
    docs = sorted(attestation_data.glob("*.b64"))
    assert len(docs) >= 5
    for doc in docs:
        raw = base64.b64decode(doc.read_text().strip())
        payload = cbor2.loads(cbor2.loads(raw)[2])
        instance_id = payload["module_id"].split("-enc")[0]
        assert pcr4_of_instance_id(instance_id) == payload["pcrs"][4], doc.name


def test_pcr8_of_certificate_pem_and_der_agree_with_hashlib() -> None:
    pem = ROOT_PEM.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    expected = hashlib.sha384(b"\0" * 48 + hashlib.sha384(der).digest()).digest()
    assert pcr8_of_certificate(pem) == expected
    assert pcr8_of_certificate(der) == expected
    assert pcr8_of_certificate(pem.decode()) == expected


def test_pcr8_rejects_garbage() -> None:
    with pytest.raises(InvalidInput, match="signing certificate: expected an X.509 certificate"):
        pcr8_of_certificate(b"not a certificate")


def _m() -> Measurements:
    return Measurements(b"\x01" * 48, b"\x02" * 48, b"\x03" * 48)


def test_measurements_nitro_cli_shape_and_round_trip() -> None:
    m = _m()
    out = m.to_nitro_cli()
    assert out == {
        "HashAlgorithm": HASH_ALGORITHM,
        "PCR0": "01" * 48,
        "PCR1": "02" * 48,
        "PCR2": "03" * 48,
    }
    assert HASH_ALGORITHM == "Sha384 { ... }"
    assert Measurements.from_nitro_cli_json({"Measurements": out}) == m
    assert Measurements.from_nitro_cli_json(out) == m
    signed = Measurements.from_hex(pcr0="AA" * 48, pcr1="bb" * 48, pcr2="cc" * 48, pcr8="dd" * 48)
    assert signed.to_nitro_cli()["PCR8"] == "dd" * 48
    assert signed.hex(0) == "aa" * 48
    assert signed.image_sha384 == "aa" * 48
    assert sorted(signed.by_index()) == [0, 1, 2, 8]
    assert Measurements.from_nitro_cli_json(signed.to_nitro_cli()) == signed


def test_measurements_debug() -> None:
    assert Measurements.debug().is_debug
    assert not _m().is_debug
    assert Measurements.debug().pcr0 == bytes(48)


def test_measurements_are_frozen_and_validated() -> None:
    with pytest.raises(AttributeError):
        _m().pcr0 = bytes(48)  # type: ignore[misc]
    with pytest.raises(InvalidInput, match="PCR1: expected 48 bytes, found 3"):
        Measurements(bytes(48), b"abc", bytes(48))
    with pytest.raises(InvalidInput, match="PCR2: expected 96 hex digits, found 'zz'"):
        Measurements.from_hex(pcr0="00" * 48, pcr1="00" * 48, pcr2="zz")
    with pytest.raises(InvalidInput, match="PCR0: expected 96 hex digits, found 94 characters"):
        Measurements.from_hex(pcr0="00" * 47, pcr1="00" * 48, pcr2="00" * 48)
    with pytest.raises(InvalidInput, match="missing PCR2"):
        Measurements.from_nitro_cli_json({"Measurements": {"PCR0": "00" * 48, "PCR1": "00" * 48}})
    with pytest.raises(InvalidInput, match="PCR index: expected one of"):
        _m().hex(8)
