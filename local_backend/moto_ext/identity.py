"""Who is calling: the principal behind a SigV4 request, with the signature checked.

The local endpoint knows every secret (moto's IAM/STS backends hold them), so it can do what
AWS does: recompute the SigV4 signature with botocore's signer and refuse a mismatch. Access
keys map to principals: `testing` -> the account root; STS temporary keys -> the assumed
role (policy matching uses the role ARN); IAM user keys -> the user.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_ACCOUNT, LOCAL_SECRET_ACCESS_KEY

# access key -> (secret, account) of keys that act as an account root
ROOT_KEYS: dict[str, tuple[str, str]] = {
    LOCAL_ACCESS_KEY_ID: (LOCAL_SECRET_ACCESS_KEY, LOCAL_ACCOUNT)
}
MAX_SKEW = dt.timedelta(minutes=15)  # AWS refuses signatures older/newer than this
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request,\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<sig>[0-9a-f]+)\s*$"
)


class AuthFailure(Exception):
    """A request AWS would refuse before authorization; `code` is AWS's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Caller:
    """The authenticated caller.

    `principal` is the ARN used for policy matching (root, user or *role* ARN);
    `display_arn` is what AWS prints in AccessDenied messages (the assumed-role session ARN
    for role sessions); `kind` is "root", "user" or "role".
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
    if access_key_id in ROOT_KEYS:
        secret, account = ROOT_KEYS[access_key_id]
        root = f"arn:aws:iam::{account}:root"
        return Caller(access_key_id, account, root, root, "root"), secret
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
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > MAX_SKEW:
        raise AuthFailure(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} "
            f"({now.strftime('%Y%m%dT%H%M%SZ')} - 15 min.)",
        )
    caller, secret = lookup(m["akid"], lower.get("x-amz-security-token"))
    signed = m["signed"].split(";")
    missing = [h for h in signed if h not in lower]
    if missing:
        raise AuthFailure("IncompleteSignatureException", f"Signed headers missing: {missing}")
    req = AWSRequest(method=method, url=url, data=body, headers={h: lower[h] for h in signed})
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(
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
    return caller


def identity_policies(caller: Caller) -> list[dict[str, Any]]:
    """The caller's identity-based policies (inline + attached managed; users: + groups)."""
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
    docs: list[dict[str, Any]] = []
    for h in holders:
        docs.extend(_as_doc(p) for p in h.policies.values())
        for managed in h.managed_policies.values():
            version = next((v for v in managed.versions if v.is_default), None)
            if version is not None:
                docs.append(_as_doc(version.document))
    return docs


def _as_doc(policy: Any) -> dict[str, Any]:
    if isinstance(policy, dict):
        return policy
    from urllib.parse import unquote

    text = policy if policy.lstrip().startswith("{") else unquote(policy)
    return json.loads(text)
