"""NSM wire format: byte-exact against the reference examples, size limits, hostile input."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit import nsm
from enclavekit.errors import NsmMessageError

# The byte-exact examples of docs/reference/nitro-attestation-nsm-eif.md §1.3 / §1.4.
REQUEST_EXAMPLES = [
    (nsm.DescribeNSM(), "6b44657363726962654e534d"),
    (nsm.GetRandom(), "6947657452616e646f6d"),
    (nsm.DescribePCR(index=0), "a16b4465736372696265504352a165696e64657800"),
    (
        nsm.ExtendPCR(index=16, data=b"\x01\x02\x03"),
        "a169457874656e64504352a265696e64657810646461746143010203",
    ),
    (nsm.LockPCR(index=16), "a1674c6f636b504352a165696e64657810"),
    (nsm.LockPCRs(range=32), "a1684c6f636b50435273a16572616e67651820"),
    (
        nsm.Attestation(),
        "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e6365f66a7075626c69635f6b6579f6",
    ),
]
RESPONSE_EXAMPLES = [
    (nsm.LockPCRResponse(), "674c6f636b504352"),
    (nsm.LockPCRsResponse(), "684c6f636b50435273"),
]


@pytest.mark.parametrize(("obj", "hexbytes"), REQUEST_EXAMPLES)
def test_request_examples_byte_exact(obj: nsm.Request, hexbytes: str) -> None:
    assert nsm.encode_request(obj).hex() == hexbytes
    assert nsm.decode_request(bytes.fromhex(hexbytes)) == obj


@pytest.mark.parametrize(("obj", "hexbytes"), RESPONSE_EXAMPLES)
def test_response_examples_byte_exact(obj: nsm.Response, hexbytes: str) -> None:
    assert nsm.encode_response(obj).hex() == hexbytes
    assert nsm.decode_response(bytes.fromhex(hexbytes)) == obj


def test_kernel_hwrng_get_random_shape() -> None:
    """The kernel driver sends these 10 bytes and expects `a1 69 GetRandom a1 66 random bstr`."""
    assert nsm.decode_request(bytes.fromhex("6947657452616e646f6d")) == nsm.GetRandom()
    raw = nsm.encode_response(nsm.GetRandomResponse(random=b"\xaa" * 256))
    assert raw.startswith(bytes.fromhex("a16947657452616e646f6da16672616e646f6d590100"))
    assert raw.endswith(b"\xaa" * 256)


def test_response_shapes() -> None:
    assert (
        nsm.encode_response(nsm.ErrorResponse(nsm.ErrorCode.InputTooLarge)).hex()
        == "a1654572726f72" + "6d" + b"InputTooLarge".hex()
    )
    raw = nsm.encode_response(nsm.DescribePCRResponse(lock=True, data=b"\0" * 48))
    assert cbor2.loads(raw) == {"DescribePCR": {"lock": True, "data": b"\0" * 48}}
    assert raw.startswith(bytes.fromhex("a16b4465736372696265504352a2646c6f636bf5646461746158"))
    raw = nsm.encode_response(nsm.AttestationResponse(document=b"\x84\x44"))
    assert raw.hex() == "a16b4174746573746174696f6ea168646f63756d656e74428444"
    desc = nsm.DescribeNSMResponse(1, 0, 0, "i-0123-enc4567", 32, (3, 1, 2, 2), "SHA384")
    assert desc.locked_pcrs == (1, 2, 3)
    raw = nsm.encode_response(desc)
    body = cbor2.loads(raw)["DescribeNSM"]
    assert list(body) == [
        "version_major",
        "version_minor",
        "version_patch",
        "module_id",
        "max_pcrs",
        "locked_pcrs",
        "digest",
    ]
    assert body["locked_pcrs"] == [1, 2, 3]
    assert nsm.decode_response(raw) == desc


def test_error_codes_are_the_c_numbering() -> None:
    names = [c.name for c in sorted(nsm.ErrorCode)]
    assert names == [
        "Success",
        "InvalidArgument",
        "InvalidIndex",
        "InvalidResponse",
        "ReadOnlyIndex",
        "InvalidOperation",
        "BufferTooSmall",
        "InputTooLarge",
        "InternalError",
    ]
    for code in nsm.ErrorCode:
        raw = cbor2.dumps({"Error": code.name})
        assert nsm.decode_response(raw) == nsm.ErrorResponse(code)
    with pytest.raises(NsmMessageError, match="ErrorCode"):
        nsm.decode_response(cbor2.dumps({"Error": "Nope"}))


def test_decoders_match_keys_by_name_and_follow_serde() -> None:
    # QEMU emits DescribeNSM keys in another order; decoders must not care.
    body = {
        "digest": "SHA384",
        "locked_pcrs": [0, 1],
        "max_pcrs": 32,
        "module_id": "m",
        "version_patch": 0,
        "version_minor": 0,
        "version_major": 1,
    }
    got = nsm.decode_response(cbor2.dumps({"DescribeNSM": body}))
    assert got == nsm.DescribeNSMResponse(1, 0, 0, "m", 32, (0, 1), "SHA384")
    # serde derive: unknown fields ignored, missing Option fields are None.
    req = cbor2.dumps({"Attestation": {"nonce": b"n", "extra": 1}})
    assert nsm.decode_request(req) == nsm.Attestation(nonce=b"n")
    req = cbor2.dumps({"ExtendPCR": {"data": b"x", "index": 17}})
    assert nsm.decode_request(req) == nsm.ExtendPCR(17, b"x")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (cbor2.dumps({"DescribeNSM": None}), "as a map"),
        (cbor2.dumps("DescribePCR"), "expected a map of fields, found a bare string"),
        (cbor2.dumps({"DescribePCR": {}}), "expected field 'index'"),
        (cbor2.dumps({"DescribePCR": {"index": 65536}}), r"0\.\.65535"),
        (cbor2.dumps({"DescribePCR": {"index": True}}), r"0\.\.65535"),
        (cbor2.dumps({"ExtendPCR": {"index": 1, "data": [1, 2]}}), "expected bytes"),
        (cbor2.dumps({"Attestation": {"nonce": "text"}}), "bytes or None"),
        (cbor2.dumps({"A": 1, "B": 2}), "one-entry map"),
        (cbor2.dumps("Reboot"), "found 'Reboot'"),
        (b"", "0 bytes"),
        (b"\x6b", "undecodable"),
        (cbor2.dumps("GetRandom") + b"\x00", "1 trailing bytes"),
        (b"\xa2\x61a\x01\x61a\x02", "undecodable"),  # duplicate keys
    ],
)
def test_bad_requests_name_the_problem(raw: bytes, match: str) -> None:
    with pytest.raises(NsmMessageError, match=match):
        nsm.decode_request(raw)


def test_size_limits() -> None:
    # A 4050-byte user_data with null nonce/public_key is exactly 4096 request bytes (§1.7).
    assert len(nsm.encode_request(nsm.Attestation(user_data=b"u" * 4050))) == 0x1000
    with pytest.raises(NsmMessageError, match="at most 4096 bytes, found 4097"):
        nsm.encode_request(nsm.Attestation(user_data=b"u" * 4051))
    big = cbor2.dumps({"Attestation": {"user_data": b"u" * 4096}})
    with pytest.raises(NsmMessageError, match="at most 4096 bytes"):
        nsm.decode_request(big)
    with pytest.raises(NsmMessageError, match="at most 12288 bytes"):
        nsm.encode_response(nsm.AttestationResponse(document=b"d" * 0x3000))
    with pytest.raises(NsmMessageError, match="at most 12288 bytes"):
        nsm.decode_response(b"\x00" * 0x3001)
    assert nsm.NSM_IOCTL_RAW == (3 << 30) | (32 << 16) | (0x0A << 8)


def test_value_objects_validate() -> None:
    with pytest.raises(NsmMessageError, match="ExtendPCR.data"):
        nsm.ExtendPCR(16, "text")  # type: ignore[arg-type]
    with pytest.raises(NsmMessageError, match="digest"):
        nsm.DescribeNSMResponse(1, 0, 0, "m", 32, (), "MD5")
    with pytest.raises(NsmMessageError, match="request object"):
        nsm.encode_request(nsm.GetRandomResponse(b""))  # type: ignore[arg-type]


_requests = st.one_of(
    st.builds(nsm.DescribePCR, st.integers(0, 0xFFFF)),
    st.builds(nsm.ExtendPCR, st.integers(0, 0xFFFF), st.binary(max_size=64)),
    st.builds(nsm.LockPCR, st.integers(0, 0xFFFF)),
    st.builds(nsm.LockPCRs, st.integers(0, 0xFFFF)),
    st.just(nsm.DescribeNSM()),
    st.just(nsm.GetRandom()),
    st.builds(
        nsm.Attestation,
        st.none() | st.binary(max_size=64),
        st.none() | st.binary(max_size=64),
        st.none() | st.binary(max_size=64),
    ),
)
_responses = st.one_of(
    st.builds(nsm.DescribePCRResponse, st.booleans(), st.binary(max_size=64)),
    st.builds(nsm.ExtendPCRResponse, st.binary(max_size=64)),
    st.just(nsm.LockPCRResponse()),
    st.just(nsm.LockPCRsResponse()),
    st.builds(
        nsm.DescribeNSMResponse,
        st.integers(0, 9),
        st.integers(0, 9),
        st.integers(0, 9),
        st.text(max_size=40),
        st.integers(0, 64),
        st.frozensets(st.integers(0, 31)),
        st.sampled_from(["SHA256", "SHA384", "SHA512"]),
    ),
    st.builds(nsm.AttestationResponse, st.binary(max_size=128)),
    st.builds(nsm.GetRandomResponse, st.binary(max_size=64)),
    st.builds(nsm.ErrorResponse, st.sampled_from(list(nsm.ErrorCode))),
)


@settings(max_examples=200, deadline=None)
@given(_requests)
def test_request_round_trip(req: nsm.Request) -> None:
    assert nsm.decode_request(nsm.encode_request(req)) == req


@settings(max_examples=200, deadline=None)
@given(_responses)
def test_response_round_trip(resp: nsm.Response) -> None:
    assert nsm.decode_response(nsm.encode_response(resp)) == resp


_cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.binary(max_size=16)
    | st.text(max_size=12)
    | st.sampled_from(["DescribeNSM", "GetRandom", "LockPCR", "Error", "Attestation"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["index", "data", "range", "lock", "DescribePCR", "ExtendPCR", "Error", "digest"]
            )
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64) | _cbor_values.map(cbor2.dumps))
def test_decoders_raise_only_our_error(raw: bytes) -> None:
    for decoder in (nsm.decode_request, nsm.decode_response):
        try:
            decoder(raw)
        except NsmMessageError as exc:
            assert "\n" not in str(exc)
