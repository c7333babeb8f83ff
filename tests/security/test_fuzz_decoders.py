"""Hostile bytes into the decoders this issue added or moved: only our errors, never a hang.

(The attestation, NSM, CMS, EIF and provisioning decoders have their own hypothesis tests in
tests/test_*.py; templates and policy documents in the linter's.)
"""

from __future__ import annotations

import base64
import contextlib
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.errors import EnclaveKitError
from local_backend.emulator.vsock_proxy import Allowlist
from local_backend.moto_ext.kms.ciphertext import (
    context_aad,
    decode_blob_param,
    encryption_context,
    parse_blob,
)
from local_backend.moto_ext.kms.models import KmsRequestError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200) | _json)
def test_blob_param_decoder_raises_only_serialization_errors(value: object) -> None:
    try:
        decode_blob_param(value, "CiphertextBlob")
    except KmsRequestError as exc:
        assert exc.code == "SerializationException"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=8000))
def test_blob_parser_raises_only_invalid_ciphertext(raw: bytes) -> None:
    seen: list[str] = []
    try:
        blob = parse_blob(raw, lambda key_id: seen.append(key_id))
    except KmsRequestError as exc:
        assert exc.code == "InvalidCiphertextException"
        assert seen == []  # nothing was looked up for a blob that does not parse
    else:
        assert blob.key is None and seen == [blob.key_id]


@settings(max_examples=150, deadline=None)
@given(_json)
def test_encryption_context_accepts_only_string_maps(value: object) -> None:
    try:
        ctx = encryption_context(value, "EncryptionContext")
    except KmsRequestError as exc:
        assert exc.code in ("SerializationException", "ValidationException")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items())


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=4),
    st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=4),
)
def test_context_aad_is_injective(a: dict[str, str], b: dict[str, str]) -> None:
    """Different maps never bind to the same bytes (the concatenation bug of attack 4)."""
    assert (context_aad(a) == context_aad(b)) == (a == b)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400) | _json.map(lambda v: json.dumps(v).encode()))
def test_vsock_proxy_allowlist_reader_raises_only_our_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "vsock-proxy.yaml"
    path.write_bytes(data)
    with contextlib.suppress(EnclaveKitError):
        Allowlist.load(path)


@pytest.mark.parametrize(
    "payload",
    [
        b"".join(  # billion laughs: ten levels of ten aliases each
            b"l%d: &l%d [%s]\n" % (i, i, b",".join([b"*l%d" % (i - 1)] * 10) if i else b"'x'")
            for i in range(10)
        ),
        b"allowlist: " + b"[" * 5000 + b"]" * 5000,
        b"&a [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
    ],
)
def test_vsock_proxy_allowlist_hostile_yaml_is_bounded(tmp_path: Path, payload: bytes) -> None:
    """Deep nesting and aliases: a one-line error or a value, within bounded memory."""
    path = tmp_path / "vsock-proxy.yaml"
    path.write_bytes(payload)
    tracemalloc.start()
    try:
        Allowlist.load(path)
    except EnclaveKitError as exc:
        assert "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_blob_param_is_strict_where_base64_decoders_are_lenient() -> None:
    good = base64.b64encode(b"\x00" * 80).decode()
    assert decode_blob_param(good, "CiphertextBlob") == b"\x00" * 80
    for bad in (good[:10] + "*" + good[10:], good + "\n", " " + good, good[:-1]):
        with pytest.raises(KmsRequestError) as info:
            decode_blob_param(bad, "CiphertextBlob")
        assert info.value.code == "SerializationException"
