"""SigV4 authentication of the local endpoint, on requests signed by botocore itself."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_ACCOUNT, LOCAL_SECRET_ACCESS_KEY
from local_backend.moto_ext.identity import AuthFailure, authenticate

URL = "http://localhost:4599/"
BODY = b'{"KeyId": "alias/x"}'


def _signed(secret: str = LOCAL_SECRET_ACCESS_KEY, body: bytes = BODY) -> dict[str, str]:
    req = AWSRequest(
        "POST",
        URL,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.Decrypt",
        },
    )
    SigV4Auth(Credentials(LOCAL_ACCESS_KEY_ID, secret), "kms", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    headers["Host"] = "localhost:4599"
    return headers


def test_root_key_authenticates() -> None:
    caller = authenticate("POST", URL, _signed(), BODY)
    assert (caller.kind, caller.account) == ("root", LOCAL_ACCOUNT)
    assert caller.principal == caller.display_arn == f"arn:aws:iam::{LOCAL_ACCOUNT}:root"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, b: (_signed("wrong"), b), "InvalidSignatureException"),
        (lambda h, b: (h, b + b" "), "InvalidSignatureException"),  # body tampered
        (
            lambda h, b: ({**h, "X-Amz-Target": "TrentService.Encrypt"}, b),
            "InvalidSignatureException",
        ),  # signed header tampered
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "Authorization"}, b),
            "MissingAuthenticationTokenException",
        ),
        (
            lambda h, b: ({**h, "Authorization": "AWS4-HMAC-SHA256 nonsense"}, b),
            "IncompleteSignatureException",
        ),
        (
            lambda h, b: (
                {
                    **h,
                    "Authorization": h["Authorization"].replace(
                        LOCAL_ACCESS_KEY_ID, "AKIAUNKNOWN0000000"
                    ),
                },
                b,
            ),
            "UnrecognizedClientException",
        ),
    ],
)
def test_bad_requests_refused(mutate: object, code: str) -> None:
    headers, body = mutate(_signed(), BODY)  # type: ignore[operator]
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, headers, body)
    assert info.value.code == code


def test_expired_signature() -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, _signed(), BODY, now=later)
    assert info.value.code == "InvalidSignatureException"
    assert info.value.message.startswith("Signature expired:")


def test_signature_not_yet_current() -> None:
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, _signed(), BODY, now=earlier)
    assert info.value.code == "InvalidSignatureException"
    assert info.value.message.startswith("Signature not yet current:")


def _signed_without(
    *names: str, service: str = "kms", extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Signed by botocore with `names` left out of SignedHeaders, then sent anyway."""
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "TrentService.Decrypt",
        **(extra or {}),
    }
    req = AWSRequest("POST", URL, data=BODY, headers=headers)
    held = {n: req.headers[n] for n in names}
    for n in names:
        del req.headers[n]
    SigV4Auth(
        Credentials(LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY), service, "us-east-1"
    ).add_auth(req)
    return {**dict(req.headers.items()), **held, "Host": "localhost:4599"}


@pytest.mark.parametrize(
    ("names", "extra", "code", "text"),
    [
        # the operation itself outside the signature: a relay could swap it
        (("X-Amz-Target",), None, "InvalidSignatureException", "x-amz-target"),
        (("X-Amz-Security-Token",), {"X-Amz-Security-Token": "tok"}, "InvalidSignatureException",
         "x-amz-security-token"),
    ],
)  # fmt: skip
def test_unsigned_amz_headers_refused(
    names: tuple[str, ...], extra: dict[str, str] | None, code: str, text: str
) -> None:
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, _signed_without(*names, extra=extra), BODY)
    assert info.value.code == code
    assert "headers present in the request which were not signed" in info.value.message
    assert text in info.value.message and info.value.unsigned == (text,)


def test_host_and_date_must_be_signed() -> None:
    headers = _signed()
    for name in ("host", "x-amz-date"):
        auth = headers["Authorization"].replace(f"{name};", "").replace(f";{name}", "")
        with pytest.raises(AuthFailure) as info:
            authenticate("POST", URL, {**headers, "Authorization": auth}, BODY)
        assert info.value.code == "IncompleteSignatureException"
        assert f"'{name}' must be a 'SignedHeader'" in info.value.message


def test_credential_scope_date_must_match() -> None:
    headers = _signed()
    today = headers["X-Amz-Date"][:8]
    auth = headers["Authorization"].replace(f"/{today}/", "/20200101/")
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, {**headers, "Authorization": auth}, BODY)
    assert info.value.code == "InvalidSignatureException"
    assert info.value.message.startswith("Date in Credential scope does not match")


def test_s3_payload_hash_is_checked() -> None:
    url = "http://localhost:4599/bucket/key"
    req = AWSRequest("PUT", url, data=b"original", headers={})
    S3SigV4Auth(
        Credentials(LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY), "s3", "us-east-1"
    ).add_auth(req)
    headers = {**dict(req.headers.items()), "Host": "localhost:4599"}
    assert authenticate("PUT", url, headers, b"original").kind == "root"
    with pytest.raises(AuthFailure) as info:
        authenticate("PUT", url, headers, b"tampered")
    assert info.value.code == "XAmzContentSHA256Mismatch"


def test_ec2_service_key_is_good_for_sts_only() -> None:
    from local_backend.moto_ext.identity import (
        EC2_SERVICE_ACCESS_KEY_ID,
        EC2_SERVICE_SECRET_ACCESS_KEY,
    )

    def signed(service: str) -> dict[str, str]:
        req = AWSRequest(
            "POST", URL, data=BODY, headers={"Content-Type": "application/x-amz-json-1.1"}
        )
        creds = Credentials(EC2_SERVICE_ACCESS_KEY_ID, EC2_SERVICE_SECRET_ACCESS_KEY)
        SigV4Auth(creds, service, "us-east-1").add_auth(req)
        return {**dict(req.headers.items()), "Host": "localhost:4599"}

    caller = authenticate("POST", URL, signed("sts"), BODY)
    assert (caller.kind, caller.principal) == ("service", "ec2.amazonaws.com")
    with pytest.raises(AuthFailure) as info:
        authenticate("POST", URL, signed("kms"), BODY)
    assert info.value.code == "UnrecognizedClientException"
