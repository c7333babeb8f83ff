"""Who is calling: the principal behind a SigV4 request, with the signature checked.

The local endpoint knows every secret (moto's IAM/STS backends hold them), so it can do what
AWS does: recompute the SigV4 signature with botocore's signer and refuse a mismatch. Access
keys map to principals: `testing` -> the account root; STS temporary keys -> the assumed
role (policy matching uses the role ARN); IAM user keys -> the user.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from enclavekit.errors import AwsRequestError
from enclavekit.localenv import (
    INSTANCE_SOURCE_ADDRESS,
    LOCAL_ACCESS_KEY_ID,
    LOCAL_ACCOUNT,
    LOCAL_SECRET_ACCESS_KEY,
)

# access key -> (secret, account) of keys that act as an account root
ROOT_KEYS: dict[str, tuple[str, str]] = {
    LOCAL_ACCESS_KEY_ID: (LOCAL_SECRET_ACCESS_KEY, LOCAL_ACCOUNT)
}
# The key the local stand-in for IMDS signs with: EC2 itself (the service principal
# ec2.amazonaws.com) assuming an instance's role. It may call sts:AssumeRole only, and only a
# role whose trust policy names ec2.amazonaws.com gets it through (the IAM layer decides).
EC2_SERVICE_ACCESS_KEY_ID = "EKLOCALEC2SERVICE"
EC2_SERVICE_SECRET_ACCESS_KEY = "ec2.amazonaws.com-local"
SERVICE_KEYS: dict[str, tuple[str, str, str]] = {
    EC2_SERVICE_ACCESS_KEY_ID: (EC2_SERVICE_SECRET_ACCESS_KEY, LOCAL_ACCOUNT, "ec2.amazonaws.com")
}
# Instances reach the endpoint only through relays on the machine (a host's endpoint relay,
# the TLS front relaying for it, an enclave's vsock-proxy), which connect from this loopback
# address. The root key and the service keys are constants of this source: an instance may not
# use them (on EC2 it holds its own role and nothing else), so for requests from here they are
# unknown keys, as AWS answers any other.
_from_instance: contextvars.ContextVar[bool] = contextvars.ContextVar("instance", default=False)


@contextlib.contextmanager
def request_source(remote_addr: str | None) -> Iterator[None]:
    """Around one request: whether it came from an instance (its relay's source address)."""
    token = _from_instance.set(remote_addr == INSTANCE_SOURCE_ADDRESS)
    try:
        yield
    finally:
        _from_instance.reset(token)


UNSIGNED_OK = frozenset({"x-amz-content-sha256"})  # S3 tolerates it unsigned
UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-")
MAX_SKEW = dt.timedelta(minutes=15)  # AWS refuses signatures older/newer than this
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<sig>[0-9a-f]+)\s*$"
)


class AuthFailure(AwsRequestError):
    """A request AWS would refuse before authorization; `code` is AWS's error code (JSON
    protocol spelling; the IAM layer translates it per protocol). `unsigned` names the
    headers that were present but not signed (S3 answers those with AccessDenied)."""

    def __init__(self, code: str, message: str, unsigned: tuple[str, ...] = ()) -> None:
        super().__init__(code, message)
        self.unsigned = unsigned


@dataclass(frozen=True)
class Caller:
    """The authenticated caller.

    `principal` is the ARN used for policy matching (root, user or *role* ARN);
    `display_arn` is what AWS prints in AccessDenied messages (the assumed-role session ARN
    for role sessions); `kind` is "root", "user", "role", "service" (a service principal such
    as ec2.amazonaws.com: `principal` is its name) or "anonymous" (S3 without a signature).
    """

    access_key_id: str
    account: str
    principal: str
    display_arn: str
    kind: str
    name: str | None = None


def _iam(account: str) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account]["aws"]


def _find_key(access_key_id: str) -> tuple[str, Any] | None:
    from moto.iam.models import iam_backends

    for account, parts in list(iam_backends.items()):
        backend = parts["aws"]
        key = backend.access_keys.get(access_key_id)
        if key is not None:
            return account, key
    return None


def lookup(access_key_id: str, session_token: str | None) -> tuple[Caller, str]:
    """The caller and its secret for an access key; AuthFailure if AWS would not know it."""
    if _from_instance.get() and (access_key_id in ROOT_KEYS or access_key_id in SERVICE_KEYS):
        raise AuthFailure(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if access_key_id in ROOT_KEYS:
        secret, account = ROOT_KEYS[access_key_id]
        root = f"arn:aws:iam::{account}:root"
        return Caller(access_key_id, account, root, root, "root"), secret
    if access_key_id in SERVICE_KEYS:
        secret, account, service = SERVICE_KEYS[access_key_id]
        return Caller(access_key_id, account, service, service, "service"), secret
    found = _find_key(access_key_id)
    if found is None:
        raise AuthFailure(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    account, key = found
    if getattr(key, "status", "Active") != "Active":
        raise AuthFailure(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if key.role_arn:  # STS temporary credentials
        session = _assumed_role(access_key_id)
        if session is None or session_token != session.session_token:
            raise AuthFailure(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if _expired(session.expiration):
            raise AuthFailure(
                "ExpiredTokenException", "The security token included in the request is expired"
            )
        name = key.role_arn.rsplit("/", 1)[-1]
        return (
            Caller(access_key_id, account, key.role_arn, session.arn, "role", name),
            key.secret_access_key,
        )
    user = _iam(account).get_user_from_access_key_id(access_key_id)
    if user is None:
        raise AuthFailure(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    return Caller(access_key_id, account, user.arn, user.arn, "user", user.name), (
        key.secret_access_key
    )


def _expired(expiration: Any) -> bool:
    """moto keeps a session's expiry as a naive UTC datetime."""
    if not isinstance(expiration, dt.datetime):
        return False
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=dt.UTC)
    return expiration <= dt.datetime.now(dt.UTC)


def _assumed_role(access_key_id: str) -> Any:
    from moto.sts.models import sts_backends

    for parts in list(sts_backends.values()):
        backend = parts.get("aws") if hasattr(parts, "get") else None
        if backend is None:
            continue
        found = backend.get_assumed_role_from_access_key(access_key_id)
        if found is not None:
            return found
    return None


def authenticate(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: dt.datetime | None = None,
) -> Caller:
    """Check the request's SigV4 signature and return the caller (AuthFailure otherwise)."""
    auth = headers.get("Authorization") or headers.get("authorization")
    if not auth:
        raise AuthFailure("MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH.match(auth.strip())
    if not m:
        raise AuthFailure(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"for AWS4-HMAC-SHA256, got {auth[:60]!r}",
        )
    lower = {k.lower(): v for k, v in headers.items()}
    amz_date = lower.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise AuthFailure(
            "IncompleteSignatureException", "Authorization requires a valid X-Amz-Date header"
        ) from None
    if m["date"] != amz_date[:8]:
        raise AuthFailure(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{m['date']}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    now = now or dt.datetime.now(dt.UTC)
    if when - now > MAX_SKEW:
        raise AuthFailure(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} "
            f"({now.strftime('%Y%m%dT%H%M%SZ')} + 15 min.)",
        )
    if now - when > MAX_SKEW:
        raise AuthFailure(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} "
            f"({now.strftime('%Y%m%dT%H%M%SZ')} - 15 min.)",
        )
    caller, secret = lookup(m["akid"], lower.get("x-amz-security-token"))
    if caller.kind == "service" and m["service"] != "sts":
        raise AuthFailure(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    signed = m["signed"].split(";")
    missing = [h for h in signed if h not in lower]
    if missing:
        raise AuthFailure("IncompleteSignatureException", f"Signed headers missing: {missing}")
    for required in ("host", "x-amz-date"):
        if required not in signed:
            raise AuthFailure(
                "IncompleteSignatureException",
                f"'{required}' must be a 'SignedHeader' in the AWS Authorization.",
            )
    _refuse_unsigned(lower, signed)
    req = AWSRequest(method=method, url=url, data=body, headers={h: lower[h] for h in signed})
    req.context["timestamp"] = amz_date
    auth_cls = S3SigV4Auth if m["service"] == "s3" else SigV4Auth
    signer = auth_cls(
        Credentials(m["akid"], secret, lower.get("x-amz-security-token")),
        m["service"],
        m["region"],
    )
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    if not hmac.compare_digest(expected, m["sig"]):
        raise AuthFailure(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )
    claimed = lower.get("x-amz-content-sha256")
    if claimed and not claimed.startswith(UNSIGNED_PAYLOADS):
        actual = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(claimed, actual):
            raise AuthFailure(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
    return caller


def _refuse_unsigned(lower: dict[str, str], signed: list[str]) -> None:
    """Every x-amz-* header sent must be signed, or a relay could swap X-Amz-Target (the
    operation), X-Amz-Security-Token or S3's x-amz-* options under a valid signature."""
    unsigned = tuple(
        sorted(h for h in lower if h.startswith("x-amz-") and h not in signed + list(UNSIGNED_OK))
    )
    if unsigned:
        raise AuthFailure(
            "InvalidSignatureException",
            "There were headers present in the request which were not signed: "
            + ", ".join(unsigned),
            unsigned,
        )


class _PresignedS3(S3SigV4Auth):
    """S3's query-string SigV4: the payload is never signed."""

    def payload(self, request: Any) -> str:
        return "UNSIGNED-PAYLOAD"


MAX_PRESIGN_S = 604800  # 7 days, S3's limit for X-Amz-Expires


def authenticate_presigned(
    method: str, url: str, headers: Mapping[str, str], now: dt.datetime | None = None
) -> Caller:
    """Check an S3 presigned URL (query-string SigV4) and return the caller."""
    parts = urlsplit(url)
    pairs = [p.partition("=") for p in parts.query.split("&") if p]
    params = {unquote(k): unquote(v) for k, _, v in pairs}
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        raise AuthFailure(
            "AuthorizationQueryParametersError",
            'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"',
        )
    scope = params.get("X-Amz-Credential", "").split("/")
    amz_date = params.get("X-Amz-Date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        expires = int(params.get("X-Amz-Expires", ""))
    except ValueError:
        raise AuthFailure(
            "AuthorizationQueryParametersError",
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
            "X-Amz-Expires parameters.",
        ) from None
    if len(scope) != 5 or scope[4] != "aws4_request" or not 0 < expires <= MAX_PRESIGN_S:
        raise AuthFailure(
            "AuthorizationQueryParametersError",
            "X-Amz-Credential must be <key>/<date>/<region>/<service>/aws4_request and "
            f"X-Amz-Expires 1..{MAX_PRESIGN_S}",
        )
    now = now or dt.datetime.now(dt.UTC)
    if now > when + dt.timedelta(seconds=expires):
        raise AuthFailure("AccessDenied", "Request has expired")
    if when - now > MAX_SKEW:
        raise AuthFailure("AccessDenied", "Request is not valid yet")
    caller, secret = lookup(scope[0], params.get("X-Amz-Security-Token"))
    lower = {k.lower(): v for k, v in headers.items()}
    signed = params.get("X-Amz-SignedHeaders", "").split(";")
    if "host" not in signed or any(h not in lower for h in signed):
        raise AuthFailure(
            "AuthorizationQueryParametersError", "X-Amz-SignedHeaders must name host and be sent"
        )
    _refuse_unsigned(lower, signed)
    query = "&".join(f"{k}{sep}{v}" for k, sep, v in pairs if k != "X-Amz-Signature")
    req = AWSRequest(
        method=method,
        url=urlunsplit(parts._replace(query=query)),
        headers={h: lower[h] for h in signed},
    )
    req.context["timestamp"] = amz_date
    signer = _PresignedS3(
        Credentials(scope[0], secret, params.get("X-Amz-Security-Token")), scope[3], scope[2]
    )
    expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
        raise AuthFailure(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )
    return caller


def identity_policies(caller: Caller) -> list[dict[str, Any]]:
    """The caller's identity-based policies (inline + attached managed; users: + groups)."""
    return [_as_doc(p) for p in stored_identity_policies(caller)]


def stored_identity_policies(caller: Caller) -> list[Any]:
    """The same policies as moto stores them (JSON or URL-encoded text, or dicts), so a
    caller may cache its parse on the stored text."""
    if caller.kind == "root":
        return []
    iam = _iam(caller.account)
    holders: list[Any] = []
    if caller.kind == "role":
        role = next((r for r in iam.roles.values() if r.arn == caller.principal), None)
        if role is not None:
            holders.append(role)
    else:
        holders.append(iam.get_user(caller.name))
        holders.extend(iam.get_groups_for_user(caller.name))
    docs: list[Any] = []
    for h in holders:
        docs.extend(h.policies.values())
        for managed in h.managed_policies.values():
            version = next((v for v in managed.versions if v.is_default), None)
            if version is not None:
                docs.append(version.document)
    return docs


def _as_doc(policy: Any) -> dict[str, Any]:
    if isinstance(policy, dict):
        return policy
    from urllib.parse import unquote

    text = policy if policy.lstrip().startswith("{") else unquote(policy)
    return json.loads(text)
