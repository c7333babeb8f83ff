"""SigV4 authentication of the local endpoint, on requests signed by botocore itself."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import SigV4Auth
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
