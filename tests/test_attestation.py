"""Attestation documents: the real AWS documents verify, every change to them is rejected,
the chain rules of AWS's procedure hold, and the emulator's documents look like the real ones."""

# ruff: noqa: E501  (48-byte PCR values are kept whole, as the README states them)
from __future__ import annotations

import base64
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit import attestation as att
from enclavekit.errors import AttestationDecodeError, AttestationError, InvalidInput
from enclavekit.pcr import pcr4_of_instance_id
from enclavekit.pki import LocalPki

# Mutated certificates make cryptography warn (negative serials, odd attribute lengths) before
# our checks reject them; the warnings are expected noise here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning"),
]
ZERO = "00" * 48
PCR1_COMMON = "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f"
# PCR values exactly as ../shared/testdata/attestation/README.md states them.
EXPECTED: dict[str, dict[int, str]] = {
    "evervault_2022-10-13_nondebug_signed": {
        0: "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
        1: PCR1_COMMON,
        2: "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a",
        8: "8790eb3cce6c83d07e84b126dc61ca923333d6f66615c4a79157de48c5ab2418bdc60746ea7b7afbff03a1c6210201cb",
    },
    "evervault_2022-10-12_debug": {0: ZERO, 1: ZERO, 2: ZERO, 8: ZERO},
    "evervault_2023-01-18_nondebug_signed_from_cert_san": {
        0: "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af",
        1: PCR1_COMMON,
        2: "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a858e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
        8: "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
    },
    "evervault_2023-09-18_debug": {0: ZERO, 1: ZERO, 2: ZERO, 8: ZERO},
    "turnkey-qos_2022-07-06_nondebug": {
        0: "f8bb0133c427bc49aa39f6811a01077ce9ab7e635fa1f5439c9c8bf99754f8230e41b09426b0e595eebdc4d6ed4bc3b6",
        1: PCR1_COMMON,
        2: "c185515d78cb90a2dc1fa49ea232fb44645acd18652c96dd05a92b9c5dbfa36d61d7c7d9e71d51de38de914cd00214bb",
        3: ZERO,
        8: ZERO,
    },
}
TIMESTAMPS = {
    "evervault_2022-10-13_nondebug_signed": 1665651482136,
    "evervault_2022-10-12_debug": 1665582606081,
    "evervault_2023-01-18_nondebug_signed_from_cert_san": 1674047239280,
    "evervault_2023-09-18_debug": 1695049410860,
    "turnkey-qos_2022-07-06_nondebug": 1657117102484,
}


@pytest.fixture(scope="module")
def docs(attestation_data: Path) -> dict[str, bytes]:
    found = {p.stem: base64.b64decode(p.read_text()) for p in attestation_data.glob("*.b64")}
    assert set(found) == set(EXPECTED), "the README's documents and the files differ"
    return found


@pytest.fixture(scope="module")
def aws() -> att.TrustAnchor:
    return att.TrustAnchor.aws()


@pytest.fixture(scope="module")
def local_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki.load_or_create(tmp_path_factory.mktemp("state"))


def _rejected(raw: bytes, trust: att.TrustAnchor, at: int | datetime) -> str:
    with pytest.raises((AttestationError, AttestationDecodeError)) as info:
        att.verify(raw, trust, at)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------- the real documents


def test_aws_anchor_is_root_g1(aws: att.TrustAnchor) -> None:
    assert aws.sha256 == "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_document_verifies_with_readme_values(
    name: str, docs: dict[str, bytes], aws: att.TrustAnchor
) -> None:
    raw = docs[name]
    doc = att.verify(raw, aws, TIMESTAMPS[name])
    assert doc.timestamp == TIMESTAMPS[name]
    assert doc.digest == "SHA384"
    for index, value in EXPECTED[name].items():
        assert doc.pcrs[index].hex() == value, f"PCR{index}"
    assert sorted(doc.pcrs) == list(range(16))
    assert doc.is_debug == ("debug" in name and "nondebug" not in name)
    instance_id = doc.module_id.split("-enc")[0]
    assert doc.pcrs[4] == pcr4_of_instance_id(instance_id)
    assert doc.cabundle[0] == aws.certificate
    # The payload re-encodes byte for byte: encode() lays documents out like the NSM.
    assert cbor2.dumps(doc.payload_map()) == cbor2.loads(raw)[2]
    if not doc.is_debug:
        m = doc.measurements
        assert m.pcr0.hex() == EXPECTED[name][0]
        assert (m.pcr8 is None) == (EXPECTED[name][8] == ZERO)


def test_real_document_optional_fields(docs: dict[str, bytes]) -> None:
    debug = att.decode(docs["evervault_2022-10-12_debug"])
    assert (debug.user_data, debug.public_key, debug.nonce) == (
        b"hello, world!",
        b"my super secret key",
        None,
    )
    qos = att.decode(docs["turnkey-qos_2022-07-06_nondebug"])
    assert qos.user_data == bytes.fromhex(
        "a2ec4272c44690b2dc32ed89d4bdd266ec2b0e753dff2f25f08b5d2a15cfe2e6"
    )
    assert qos.public_key is not None and len(qos.public_key) == 800 and qos.nonce is None


def test_time_forms_and_the_stated_qos_time(docs: dict[str, bytes], aws: att.TrustAnchor) -> None:
    raw = docs["turnkey-qos_2022-07-06_nondebug"]
    att.verify(raw, aws, 1657117192 * 1000)
    att.verify(raw, aws, datetime.fromtimestamp(1657117192, tz=UTC))
    with pytest.raises(InvalidInput, match="timezone-aware"):
        att.verify(raw, aws, datetime(2022, 7, 6, 14, 20))
    # Today the 3-hour leaf has long expired: the default time (now) rejects it.
    assert "not valid at" in _rejected(raw, aws, int(time.time() * 1000))
    with pytest.raises(AttestationError, match="not valid at"):
        att.verify(raw, aws)


def test_tag_18_is_accepted_other_tags_are_not(
    docs: dict[str, bytes], aws: att.TrustAnchor
) -> None:
    name = "evervault_2022-10-13_nondebug_signed"
    att.verify(b"\xd2" + docs[name], aws, TIMESTAMPS[name])
    with pytest.raises(AttestationDecodeError, match="found tag 17"):
        att.decode(b"\xd1" + docs[name])


def test_every_single_byte_change_is_rejected(docs: dict[str, bytes], aws: att.TrustAnchor) -> None:
    """All offsets of every real document; a different bit per offset. Rejections are real
    checks: only byte-identical certificates reuse an earlier parse or signature result."""
    started = time.perf_counter()
    reasons: dict[str, int] = {}
    for name, raw in sorted(docs.items()):
        at = TIMESTAMPS[name]
        for offset in range(len(raw)):
            mutated = bytearray(raw)
            mutated[offset] ^= 1 << (offset % 8)
            try:
                att.verify(bytes(mutated), aws, at)
            except (AttestationError, AttestationDecodeError) as exc:
                kind = str(exc).split(":")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
            else:
                pytest.fail(f"{name}: flipping byte {offset} still verifies")
    assert sum(reasons.values()) == sum(len(r) for r in docs.values())
    # ~24k documents at about one ES384 verify each: ~10 s of CPU on an idle core.
    print(f"{sum(reasons.values())} mutations rejected in {time.perf_counter() - started:.1f} s")


def test_truncations_and_extensions_are_rejected(
    docs: dict[str, bytes], aws: att.TrustAnchor
) -> None:
    for name, raw in docs.items():
        for cut in range(len(raw)):
            with pytest.raises(AttestationDecodeError):
                att.verify(raw[:cut], aws, TIMESTAMPS[name])
        msg = _rejected(raw + b"\x00", aws, TIMESTAMPS[name])
        assert "1 trailing bytes" in msg


def test_wrong_root_is_rejected(
    docs: dict[str, bytes], local_pki: LocalPki, tmp_path: Path
) -> None:
    for name, raw in docs.items():
        msg = _rejected(raw, local_pki.trust_anchor(), TIMESTAMPS[name])
        assert "is not the trust anchor local root" in msg
    other = att.TrustAnchor.from_pem(_self_signed_root_pem(), name="someone else's root")
    msg = _rejected(
        docs["turnkey-qos_2022-07-06_nondebug"],
        other,
        TIMESTAMPS["turnkey-qos_2022-07-06_nondebug"],
    )
    assert "someone else's root" in msg


def test_times_outside_the_chain_are_rejected(docs: dict[str, bytes], aws: att.TrustAnchor) -> None:
    for raw in docs.values():
        doc = att.decode(raw)
        leaf = x509.load_der_x509_certificate(doc.certificate)
        before = leaf.not_valid_before_utc - timedelta(seconds=1)
        after = leaf.not_valid_after_utc + timedelta(seconds=1)
        att.verify(raw, aws, leaf.not_valid_before_utc)
        att.verify(raw, aws, leaf.not_valid_after_utc)
        assert "leaf certificate" in _rejected(raw, aws, before)
        assert "leaf certificate" in _rejected(raw, aws, after)
        root_start = x509.load_der_x509_certificate(doc.cabundle[0]).not_valid_before_utc
        assert "not valid at" in _rejected(raw, aws, root_start - timedelta(days=1))
        assert "not valid at" in _rejected(raw, aws, datetime(2050, 1, 1, tzinfo=UTC))


# ---------------------------------------------------------------- the emulator's documents


def _local_doc(pki: LocalPki, **overrides: object) -> bytes:
    key, cert = pki.issue_leaf("i-0123456789abcdef0-enc0123456789abcdef")
    fields: dict[str, object] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "pcrs": {i: bytes([i + 1]) * 48 for i in range(16)},
        "signing_key": key,
        "certificate": cert,
        "cabundle": pki.cabundle,
    }
    fields.update(overrides)
    return att.encode(**fields)  # type: ignore[arg-type]


def test_emulator_round_trip_and_anchor_separation(
    local_pki: LocalPki, docs: dict[str, bytes], aws: att.TrustAnchor
) -> None:
    raw = _local_doc(local_pki, user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024)
    doc = att.verify(raw, local_pki.trust_anchor())
    assert doc == att.verify(raw, att.TrustAnchor.local(local_pki.directory.parent))
    assert doc.user_data == b"u" * 1024 and doc.pcrs[3] == b"\x04" * 48
    assert "is not the trust anchor aws" in _rejected(raw, aws, doc.timestamp)
    name = "evervault_2022-10-13_nondebug_signed"
    att.verify(docs[name], aws, TIMESTAMPS[name])
    _rejected(docs[name], local_pki.trust_anchor(), TIMESTAMPS[name])


def test_encoded_layout_matches_real_nsm_output(
    local_pki: LocalPki, docs: dict[str, bytes]
) -> None:
    raw = _local_doc(local_pki, nonce=b"\x01" * 32, timestamp=1_700_000_000_123)
    real = docs["evervault_2022-10-13_nondebug_signed"]
    assert raw[:8] == real[:8] == bytes.fromhex("8444a1013822a059")
    protected, unprotected, payload, signature = cbor2.loads(raw)
    assert (protected, unprotected, len(signature)) == (att.PROTECTED_ES384, {}, 96)
    real_payload = cbor2.loads(real)[2]
    # Same head bytes: map(9), "module_id" text key, ...; same key order; nulls for absent.
    assert payload[:11] == real_payload[:11] == b"\xa9imodule_id"
    fields = cbor2.loads(payload)
    assert list(fields) == list(cbor2.loads(real_payload)) == list(att.FIELD_ORDER)
    assert fields["public_key"] is None and fields["user_data"] is None
    assert b"jpublic_key\xf6iuser_data\xf6enonce" in payload
    assert b"itimestamp\x1b" in payload and b"dpcrs\xb0\x00X0" in payload
    assert all(isinstance(k, int) for k in fields["pcrs"])


def test_debug_detection(local_pki: LocalPki) -> None:
    pcrs = {i: bytes(48) for i in range(16)}
    pcrs[4] = pcr4_of_instance_id("i-0123456789abcdef0")
    doc = att.verify(_local_doc(local_pki, pcrs=pcrs), local_pki.trust_anchor())
    assert doc.is_debug
    assert doc.measurements.is_debug
    assert not att.decode(_local_doc(local_pki)).is_debug


def test_encode_refuses_a_mismatched_key(local_pki: LocalPki) -> None:
    _, cert = local_pki.issue_leaf("m")
    with pytest.raises(InvalidInput, match="not the signing key"):
        _local_doc(local_pki, certificate=cert)
    with pytest.raises(AttestationDecodeError, match="pcrs\\[0\\]"):
        _local_doc(local_pki, pcrs={0: b"\0" * 47})


# ---------------------------------------------------------------- chain rules of §2.4


class _Chain:
    """A hand-built P-384 chain to exercise one rule at a time."""

    def __init__(self) -> None:
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        self.keys: list[ec.EllipticCurvePrivateKey] = []
        self.certs: list[x509.Certificate] = []

    def add(
        self,
        cn: str,
        *,
        ca: bool | None,
        path_length: int | None = None,
        cert_sign: bool = True,
        digital_signature: bool = True,
        extra_critical: bool = False,
        issuer_name: str | None = None,
        hash_alg: hashes.HashAlgorithm | None = None,
        days: int = 1,
    ) -> _Chain:
        key = ec.generate_private_key(ec.SECP384R1())
        parent_key = self.keys[-1] if self.keys else key
        issuer = issuer_name or (self.certs[-1].subject.rfc4514_string()[3:] if self.certs else cn)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.start)
            .not_valid_after(self.start + timedelta(days=days))
        )
        if ca is not None:
            b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), True)
        usage = x509.KeyUsage(
            digital_signature,
            False,
            False,
            False,
            False,
            cert_sign and bool(ca),
            False,
            False,
            False,
        )
        b = b.add_extension(usage, critical=True)
        if extra_critical:
            b = b.add_extension(x509.OCSPNoCheck(), critical=True)
        cert = b.sign(parent_key, hash_alg or hashes.SHA384())
        self.keys.append(key)
        self.certs.append(cert)
        return self

    def document(self) -> tuple[bytes, att.TrustAnchor]:
        ders = [c.public_bytes(serialization.Encoding.DER) for c in self.certs]
        raw = att.encode(
            module_id="m",
            pcrs={0: bytes(48)},
            signing_key=self.keys[-1],
            certificate=ders[-1],
            cabundle=ders[:-1],
        )
        return raw, att.TrustAnchor(name="test root", certificate=ders[0])


def _root() -> _Chain:
    return _Chain().add("root", ca=True)


@pytest.mark.parametrize(
    ("chain", "reason"),
    [
        (
            lambda: (
                _root().add("i1", ca=True, path_length=0).add("i2", ca=True).add("leaf", ca=False)
            ),
            "path length constraint 0 is exceeded by 1",
        ),
        (
            lambda: _root().add("i1", ca=True, cert_sign=False).add("leaf", ca=False),
            "expected key usage keyCertSign",
        ),
        (
            lambda: _root().add("i1", ca=False).add("leaf", ca=False),
            "expected basic constraints CA:TRUE",
        ),
        (
            lambda: _root().add("i1", ca=None).add("leaf", ca=False),
            "expected basic constraints CA:TRUE",
        ),
        (lambda: _root().add("i1", ca=True).add("leaf", ca=True), "expected a non-CA leaf"),
        (
            lambda: _root().add("i1", ca=True).add("leaf", ca=False, digital_signature=False),
            "expected key usage digitalSignature",
        ),
        (
            lambda: _root().add("i1", ca=True).add("leaf", ca=False, extra_critical=True),
            "unsupported critical extension",
        ),
        (
            lambda: _root().add("i1", ca=True).add("leaf", ca=False, issuer_name="someone"),
            "issuer does not name",
        ),
        (
            lambda: _root().add("i1", ca=True).add("leaf", ca=False, hash_alg=hashes.SHA256()),
            "expected signature ecdsa-with-SHA384",
        ),
    ],
)
def test_chain_rules(chain: object, reason: str) -> None:
    raw, anchor = chain().document()  # type: ignore[operator]
    assert reason in _rejected(raw, anchor, datetime.now(UTC))


def test_good_hand_built_chain_and_pathlen_boundary() -> None:
    raw, anchor = (
        _root()
        .add("i1", ca=True, path_length=1)
        .add("i2", ca=True, path_length=0)
        .add("leaf", ca=False)
        .document()
    )
    assert att.verify(raw, anchor).module_id == "m"


def test_signature_by_another_key_is_rejected() -> None:
    chain = _root().add("i1", ca=True).add("leaf", ca=False)
    chain.keys[-1] = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidInput, match="not the signing key"):
        chain.document()
    raw, anchor = _root().add("i1", ca=True).add("leaf", ca=False).document()
    parts = cbor2.loads(raw)
    parts[3] = bytes(96 - 1) + b"\x01"
    assert "COSE_Sign1 signature does not verify" in _rejected(
        cbor2.dumps(parts), anchor, datetime.now(UTC)
    )


def test_cose_envelope_rules() -> None:
    raw, anchor = _root().add("i1", ca=True).add("leaf", ca=False).document()
    now = datetime.now(UTC)
    protected, unprotected, payload, signature = cbor2.loads(raw)
    cases = {
        "expected protected header {1: -35}": [cbor2.dumps({1: -7}), {}, payload, signature],
        "expected an empty unprotected header": [protected, {4: b"kid"}, payload, signature],
        "expected 96 bytes (raw r||s)": [protected, {}, payload, signature[:95]],
    }
    for reason, parts in cases.items():
        assert reason in _rejected(cbor2.dumps(parts), anchor, now)
    for parts, reason in [
        ([protected, {}, payload], "array of 4"),
        ([protected, [], payload, signature], "unprotected header: expected a map"),
        ([protected, {}, b"", signature], "payload: expected a byte string of 1..16384"),
        ([protected, {}, cbor2.dumps([1]), signature], "payload: expected a map"),
    ]:
        with pytest.raises(AttestationDecodeError, match=reason.replace("(", r"\(")):
            att.decode(cbor2.dumps(parts))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("digest", "SHA256", 'expected "SHA384"'),
        ("module_id", "", "non-empty text"),
        ("timestamp", 0, "unsigned integer > 0"),
        ("timestamp", -5, "unsigned integer > 0"),
        ("pcrs", {}, "1..32 entries"),
        ("pcrs", {32: bytes(48)}, "integer 0..31"),
        ("pcrs", {"0": bytes(48)}, "integer 0..31"),
        ("pcrs", {0: bytes(47)}, "32, 48 or 64 bytes"),
        ("certificate", b"", "1..1024 bytes"),
        ("cabundle", [], "non-empty array"),
        ("cabundle", [b"x" * 1025], "1..1024 bytes"),
        ("nonce", b"n" * 1025, "0..1024 bytes or null"),
        ("user_data", "text", "or null"),
        ("extra", 1, "only the 9 AttestationDocument keys"),
    ],
)
def test_payload_field_rules(
    docs: dict[str, bytes], field: str, value: object, reason: str
) -> None:
    protected, unprotected, payload, signature = cbor2.loads(docs["evervault_2022-10-12_debug"])
    fields = cbor2.loads(payload)
    fields[field] = value
    raw = cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature])
    with pytest.raises(AttestationDecodeError, match=reason):
        att.decode(raw)
    del fields[field]
    if field in att.FIELD_ORDER[:6]:
        with pytest.raises(AttestationDecodeError, match="mandatory field"):
            att.decode(cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature]))


# ---------------------------------------------------------------- hostile input


def _self_signed_root_pem() -> bytes:
    chain = _root()
    return chain.certs[0].public_bytes(serialization.Encoding.PEM)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.binary(max_size=50)
    | st.text(max_size=10)
    | st.sampled_from(list(att.FIELD_ORDER)),
    lambda c: (
        st.lists(c, max_size=5)
        | st.dictionaries(
            st.sampled_from(list(att.FIELD_ORDER)) | st.integers(0, 40), c, max_size=9
        )
    ),
    max_leaves=20,
)


@st.composite
def _cose_like(draw: st.DrawFn) -> bytes:
    payload = draw(_values)
    parts = [
        draw(st.sampled_from([att.PROTECTED_ES384, b""]) | st.binary(max_size=6)),
        draw(st.just({}) | _values),
        cbor2.dumps(payload) if draw(st.booleans()) else draw(st.binary(max_size=40)),
        draw(st.binary(min_size=94, max_size=98)),
    ]
    return cbor2.dumps(parts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | _cose_like() | _values.map(cbor2.dumps))
def test_decode_and_verify_raise_only_our_errors(raw: bytes) -> None:
    anchor = att.TrustAnchor.aws()
    with contextlib.suppress(AttestationDecodeError):
        att.decode(raw)
    with contextlib.suppress(AttestationDecodeError, AttestationError):
        att.verify(raw, anchor, 1665651482136)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_documents_raise_only_our_errors(
    docs: dict[str, bytes], aws: att.TrustAnchor, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(docs)))
    raw = bytearray(docs[name])
    for _ in range(data.draw(st.integers(1, 4))):
        offset = data.draw(st.integers(0, len(raw) - 1))
        raw[offset] = data.draw(st.integers(0, 255))
    if bytes(raw) == docs[name]:
        return
    with pytest.raises((AttestationDecodeError, AttestationError)):
        att.verify(bytes(raw), aws, TIMESTAMPS[name])


def test_sha384_sig_structure_is_what_real_documents_sign(docs: dict[str, bytes]) -> None:
    """Independent of verify(): rebuild Sig_structure and check it with the leaf key directly."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    protected, _, payload, signature = cbor2.loads(docs["turnkey-qos_2022-07-06_nondebug"])
    leaf = x509.load_der_x509_certificate(cbor2.loads(payload)["certificate"])
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))
    assert sig_structure[:12] == b"\x84jSignature1"
