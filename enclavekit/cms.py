"""The CMS EnvelopedData that KMS returns as `CiphertextForRecipient`: build and open.

Format (docs/reference/kms-acm-cloudformation.md §1.3, mirroring aws-nitro-enclaves-sdk-c
`cms.c`): a ContentInfo of type envelopedData; EnvelopedData version 2 with exactly one
KeyTransRecipientInfo version 2 identified by subjectKeyIdentifier; the content-encryption key
wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256, empty label, parameters spelled out); content
AES-256-CBC with a 16-byte IV and PKCS#7 padding. KMS answers in BER, so `open_enveloped`
accepts indefinite lengths and a chunked (constructed) encryptedContent; `build_enveloped`
writes DER, or that BER shape when `chunk` is given.

The rid's key identifier is not compared with the private key on open: how KMS derives it is
undocumented and the SDK's parser ignores it too. A wrong key fails at the OAEP unwrap instead.

A small DER writer and BER reader live here because only this one structure is needed (and the
module is vendored into the enclave image: stdlib + cryptography only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enclavekit.errors import CmsFormatError, InvalidInput

OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_DATA = "1.2.840.113549.1.7.1"
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_P_SPECIFIED = "1.2.840.113549.1.1.9"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

_SEQUENCE, _SET, _INTEGER, _OCTETS, _NULL, _OID = 0x30, 0x31, 0x02, 0x04, 0x05, 0x06
_MAX_DEPTH = 16
_MAX_INPUT = 1 << 24


# ---------------------------------------------------------------- DER writer


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _indefinite(tag: int, content: bytes) -> bytes:
    return bytes([tag, 0x80]) + content + b"\x00\x00"


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(_OID, bytes(body))


def _int(n: int) -> bytes:
    return _tlv(_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def _seq(*items: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(items))


def _sha256_alg() -> bytes:
    """SHA-256 AlgorithmIdentifier with absent parameters, as OpenSSL writes it in OAEP params."""
    return _seq(_oid(OID_SHA256))


def _oaep_alg() -> bytes:
    """RSAES-OAEP with its parameters written out: [0] SHA-256, [1] MGF1-SHA-256."""
    params = _seq(
        _tlv(0xA0, _sha256_alg()),
        _tlv(0xA1, _seq(_oid(OID_MGF1), _sha256_alg())),
    )
    return _seq(_oid(OID_RSAES_OAEP), params)


_OAEP = OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def build_enveloped(
    plaintext: bytes, recipient: rsa.RSAPublicKey, *, chunk: int | None = None
) -> bytes:
    """EnvelopedData for `recipient` as KMS builds it: DER, or chunked BER if `chunk` is set."""
    if not isinstance(plaintext, (bytes, bytearray)):
        raise InvalidInput(f"CMS plaintext: expected bytes, found {type(plaintext).__name__}")
    if not isinstance(recipient, rsa.RSAPublicKey):
        raise InvalidInput(
            f"CMS recipient: expected an RSA public key, found {type(recipient).__name__}"
        )
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise InvalidInput(f"CMS chunk: expected a positive integer or None, found {chunk!r}")
    ski = x509.SubjectKeyIdentifier.from_public_key(recipient).digest
    cek, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(bytes(plaintext)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    recipient_info = _seq(
        _int(2),
        _tlv(0x80, ski),  # rid [0] IMPLICIT SubjectKeyIdentifier
        _oaep_alg(),
        _tlv(_OCTETS, recipient.encrypt(cek, _OAEP)),
    )
    content_alg = _seq(_oid(OID_AES256_CBC), _tlv(_OCTETS, iv))
    if chunk is None:
        eci = _seq(_oid(OID_DATA), content_alg, _tlv(0x80, ciphertext))
        enveloped = _seq(_int(2), _tlv(_SET, recipient_info), eci)
        return _seq(_oid(OID_ENVELOPED_DATA), _tlv(0xA0, enveloped))
    pieces = b"".join(
        _tlv(_OCTETS, ciphertext[i : i + chunk]) for i in range(0, len(ciphertext), chunk)
    )
    eci = _indefinite(_SEQUENCE, _oid(OID_DATA) + content_alg + _indefinite(0xA0, pieces))
    enveloped = _indefinite(_SEQUENCE, _int(2) + _tlv(_SET, recipient_info) + eci)
    return _indefinite(_SEQUENCE, _oid(OID_ENVELOPED_DATA) + _indefinite(0xA0, enveloped))


# ---------------------------------------------------------------- BER reader


@dataclass(frozen=True)
class _Node:
    tag: int  # the identifier octet (class, constructed bit, number)
    value: bytes  # primitive content (empty for constructed)
    children: tuple[_Node, ...]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def _parse_one(data: bytes, pos: int, end: int, depth: int) -> tuple[_Node, int]:
    if depth > _MAX_DEPTH:
        raise CmsFormatError(f"CMS: expected at most {_MAX_DEPTH} nesting levels, found more")
    if pos + 2 > end:
        raise CmsFormatError(f"CMS: expected a tag and length at offset {pos}, found end of data")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise CmsFormatError(f"CMS: expected a low tag number at offset {pos}, found 0x{tag:02x}")
    first = data[pos + 1]
    pos += 2
    if first == 0x80:
        if not tag & 0x20:
            raise CmsFormatError(
                f"CMS: expected a definite length for primitive tag 0x{tag:02x} at offset {pos - 2}"
            )
        children = []
        while True:
            if pos + 2 > end:
                raise CmsFormatError("CMS: expected an end-of-contents marker, found end of data")
            if data[pos] == 0 and data[pos + 1] == 0:
                return _Node(tag, b"", tuple(children)), pos + 2
            child, pos = _parse_one(data, pos, end, depth + 1)
            children.append(child)
    if first & 0x80:
        count = first & 0x7F
        if count > 4 or pos + count > end:
            raise CmsFormatError(f"CMS: expected a length of at most 4 octets at offset {pos - 1}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > end:
        raise CmsFormatError(
            f"CMS: element at offset {pos} claims {length} bytes, found {end - pos} left"
        )
    if tag == 0:
        raise CmsFormatError(f"CMS: unexpected end-of-contents marker at offset {pos - 2}")
    stop = pos + length
    if not tag & 0x20:
        return _Node(tag, data[pos:stop], ()), stop
    children = []
    while pos < stop:
        child, pos = _parse_one(data, pos, stop, depth + 1)
        children.append(child)
    return _Node(tag, b"", tuple(children)), stop


def _expect(node: _Node, tag: int, what: str) -> _Node:
    if node.tag != tag:
        raise CmsFormatError(f"CMS {what}: expected tag 0x{tag:02x}, found 0x{node.tag:02x}")
    return node


def _items(node: _Node, what: str, lo: int, hi: int) -> tuple[_Node, ...]:
    if not lo <= len(node.children) <= hi:
        count = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise CmsFormatError(f"CMS {what}: expected {count} elements, found {len(node.children)}")
    return node.children


def _octets(node: _Node, what: str) -> bytes:
    """An OCTET STRING's bytes, primitive or BER-constructed from chunks (any implicit tag)."""
    if not node.constructed:
        return node.value
    parts = []
    for child in node.children:
        if child.tag not in (_OCTETS, _OCTETS | 0x20):
            raise CmsFormatError(
                f"CMS {what}: expected OCTET STRING chunks, found tag 0x{child.tag:02x}"
            )
        parts.append(_octets(child, what))
    return b"".join(parts)


def _oid_text(node: _Node, what: str) -> str:
    _expect(node, _OID, what)
    body = node.value
    if not body or body[-1] & 0x80:
        raise CmsFormatError(f"CMS {what}: expected an OBJECT IDENTIFIER, found malformed bytes")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _expect_oid(node: _Node, oid: str, what: str) -> None:
    found = _oid_text(node, what)
    if found != oid:
        raise CmsFormatError(f"CMS {what}: expected {oid}, found {found}")


def _expect_int(node: _Node, value: int, what: str) -> None:
    _expect(node, _INTEGER, what)
    found = int.from_bytes(node.value, "big", signed=True) if node.value else None
    if found != value:
        raise CmsFormatError(f"CMS {what}: expected {value}, found {found}")


def _check_hash_alg(node: _Node, what: str) -> None:
    """AlgorithmIdentifier of SHA-256, with NULL or absent parameters (RFC 4055 allows both)."""
    items = _items(_expect(node, _SEQUENCE, what), what, 1, 2)
    _expect_oid(items[0], OID_SHA256, what)
    if len(items) == 2 and (items[1].tag != _NULL or items[1].value):
        raise CmsFormatError(f"CMS {what}: expected NULL or absent parameters")


def _check_oaep(node: _Node) -> None:
    what = "keyEncryptionAlgorithm"
    items = _items(_expect(node, _SEQUENCE, what), what, 2, 2)
    _expect_oid(items[0], OID_RSAES_OAEP, what)
    params = {p.tag: p for p in _expect(items[1], _SEQUENCE, "RSAES-OAEP-params").children}
    if len(params) != len(items[1].children) or not set(params) <= {0xA0, 0xA1, 0xA2}:
        raise CmsFormatError("CMS RSAES-OAEP-params: expected [0], [1], [2] at most once each")
    if 0xA0 not in params or 0xA1 not in params:
        raise CmsFormatError(
            "CMS RSAES-OAEP-params: expected explicit SHA-256 hash and MGF1-SHA-256, "
            "found SHA-1 defaults"
        )
    _check_hash_alg(_items(params[0xA0], "OAEP hashAlgorithm", 1, 1)[0], "OAEP hashAlgorithm")
    mgf = _items(params[0xA1], "OAEP maskGenAlgorithm", 1, 1)[0]
    mgf_items = _items(_expect(mgf, _SEQUENCE, "OAEP maskGenAlgorithm"), "OAEP mask gen", 2, 2)
    _expect_oid(mgf_items[0], OID_MGF1, "OAEP maskGenAlgorithm")
    _check_hash_alg(mgf_items[1], "OAEP MGF1 hash")
    if 0xA2 in params:
        source = _items(params[0xA2], "OAEP pSourceAlgorithm", 1, 1)[0]
        src = _items(_expect(source, _SEQUENCE, "OAEP pSourceAlgorithm"), "OAEP pSource", 2, 2)
        _expect_oid(src[0], OID_P_SPECIFIED, "OAEP pSourceAlgorithm")
        if _octets(_expect_octet_tag(src[1], "OAEP label"), "OAEP label"):
            raise CmsFormatError("CMS OAEP label: expected empty, found a label")


def _expect_octet_tag(node: _Node, what: str) -> _Node:
    if node.tag not in (_OCTETS, _OCTETS | 0x20):
        raise CmsFormatError(f"CMS {what}: expected OCTET STRING, found tag 0x{node.tag:02x}")
    return node


def open_enveloped(data: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """The plaintext inside KMS's CiphertextForRecipient (`CmsFormatError` on bad input)."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput(f"CMS key: expected an RSA private key, found {type(key).__name__}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CmsFormatError(f"CMS: expected bytes, found {type(data).__name__}")
    data = bytes(data)
    if not data or len(data) > _MAX_INPUT:
        raise CmsFormatError(f"CMS: expected 1..{_MAX_INPUT} bytes, found {len(data)}")
    root, end = _parse_one(data, 0, len(data), 0)
    if end != len(data):
        raise CmsFormatError(f"CMS: expected one ContentInfo, found {len(data) - end} extra bytes")
    content_type, content = _items(_expect(root, _SEQUENCE, "ContentInfo"), "ContentInfo", 2, 2)
    _expect_oid(content_type, OID_ENVELOPED_DATA, "contentType")
    (enveloped,) = _items(_expect(content, 0xA0, "ContentInfo content"), "content", 1, 1)
    items = list(_items(_expect(enveloped, _SEQUENCE, "EnvelopedData"), "EnvelopedData", 3, 5))
    _expect_int(items.pop(0), 2, "EnvelopedData version")
    if items[0].tag == 0xA0:  # originatorInfo: certificates/CRLs we have no use for
        items.pop(0)
    recipients = _items(_expect(items[0], _SET, "recipientInfos"), "recipientInfos", 1, 1)
    ktri = recipients[0]
    if ktri.tag != _SEQUENCE:
        raise CmsFormatError(
            f"CMS RecipientInfo: expected KeyTransRecipientInfo (SEQUENCE), "
            f"found tag 0x{ktri.tag:02x}"
        )
    version, rid, key_alg, encrypted_key = _items(ktri, "KeyTransRecipientInfo", 4, 4)
    _expect_int(version, 2, "KeyTransRecipientInfo version")
    if rid.tag not in (0x80, 0xA0):
        raise CmsFormatError(
            f"CMS rid: expected subjectKeyIdentifier [0], found tag 0x{rid.tag:02x}"
        )
    _octets(rid, "rid")
    _check_oaep(key_alg)
    wrapped = _octets(_expect_octet_tag(encrypted_key, "encryptedKey"), "encryptedKey")
    if len(items) < 2 or items[1].tag != _SEQUENCE:
        raise CmsFormatError("CMS EnvelopedData: expected encryptedContentInfo after recipients")
    if len(items) > 3 or (len(items) == 3 and items[2].tag != 0xA1):
        raise CmsFormatError(
            f"CMS EnvelopedData: expected only unprotectedAttrs [1] after encryptedContentInfo, "
            f"found {len(items) - 2} more elements"
        )
    eci = _items(items[1], "EncryptedContentInfo", 3, 3)
    _expect_oid(eci[0], OID_DATA, "EncryptedContentInfo contentType")
    alg = _items(_expect(eci[1], _SEQUENCE, "contentEncryptionAlgorithm"), "content alg", 2, 2)
    _expect_oid(alg[0], OID_AES256_CBC, "contentEncryptionAlgorithm")
    iv = _octets(_expect_octet_tag(alg[1], "AES-CBC IV"), "AES-CBC IV")
    if len(iv) != 16:
        raise CmsFormatError(f"CMS AES-CBC IV: expected 16 bytes, found {len(iv)}")
    if eci[2].tag not in (0x80, 0xA0):
        raise CmsFormatError(f"CMS encryptedContent: expected [0], found tag 0x{eci[2].tag:02x}")
    ciphertext = _octets(eci[2], "encryptedContent")
    if not ciphertext or len(ciphertext) % 16:
        raise CmsFormatError(
            f"CMS encryptedContent: expected a non-empty multiple of 16 bytes, "
            f"found {len(ciphertext)}"
        )
    try:
        cek = key.decrypt(wrapped, _OAEP)
    except ValueError:
        raise CmsFormatError(
            "CMS encryptedKey: RSAES-OAEP-SHA256 unwrap failed (not encrypted to this key)"
        ) from None
    if len(cek) != 32:
        raise CmsFormatError(f"CMS content-encryption key: expected 32 bytes, found {len(cek)}")
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CmsFormatError("CMS encryptedContent: bad PKCS#7 padding after decryption") from None
