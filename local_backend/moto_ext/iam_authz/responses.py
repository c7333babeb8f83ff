"""Wire side of the IAM layer: moto's authorization hooks, answered with AWS's error shapes.

moto calls `_authenticate_and_authorize_normal_action` before every operation of every
service, and S3 calls `_authenticate_and_authorize_s3_action` with the IAM action of each REST
call. Both are replaced here (KMS keeps its own: it authorizes key policies and attestation).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from werkzeug.exceptions import HTTPException

from ..identity import AuthFailure, Caller, authenticate, authenticate_presigned
from . import actions, models

log = logging.getLogger("enclavekit.iam")
_STATE = {"enabled": True}
_UNMAPPED_SEEN: set[str] = set()
_LOCK = threading.Lock()
_REQUEST = threading.local()  # the caller of the CloudFormation request this thread serves
# botocore's S3 REST action names where IAM's differ (Service Authorization Reference, S3)
S3_IAM_ACTION = {
    "HeadBucket": "ListBucket",
    "HeadObject": "GetObject",
    "SelectObject": "GetObject",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeleteBucketCORS": "PutBucketCORS",
}
# JSON-protocol auth codes -> (query code, EC2 code, S3 code, HTTP status of query/S3)
AUTH_CODES = {
    "MissingAuthenticationTokenException": (
        "MissingAuthenticationToken",
        "MissingAuthenticationToken",
        "AccessDenied",
    ),
    "InvalidSignatureException": ("SignatureDoesNotMatch", "AuthFailure", "SignatureDoesNotMatch"),
    "UnrecognizedClientException": ("InvalidClientTokenId", "AuthFailure", "InvalidAccessKeyId"),
    "IncompleteSignatureException": (
        "IncompleteSignature",
        "IncompleteSignature",
        "AuthorizationHeaderMalformed",
    ),
    "AccessDenied": ("AccessDenied", "AuthFailure", "AccessDenied"),
    "AuthorizationQueryParametersError": (
        "IncompleteSignature",
        "AuthFailure",
        "AuthorizationQueryParametersError",
    ),
    "XAmzContentSHA256Mismatch": (
        "SignatureDoesNotMatch",
        "AuthFailure",
        "XAmzContentSHA256Mismatch",
    ),
    "ExpiredTokenException": ("ExpiredToken", "RequestExpired", "ExpiredToken"),
}
EC2_AUTH_MESSAGE = "AWS was not able to validate the provided access credentials"


class AwsError(HTTPException):
    """An error answer with AWS's body for the service's protocol."""

    def __init__(self, status: int, body: str, content_type: str, error_type: str) -> None:
        super().__init__(description=body)
        self.code = status
        self._content_type = content_type
        self._error_type = error_type

    def get_body(self, *args: Any, **kwargs: Any) -> str:
        return self.description or ""

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [("Content-Type", self._content_type), ("x-amzn-ErrorType", self._error_type)]


_REQUEST_ID = "00000000-0000-0000-0000-000000000000"
# The XML error documents: protocol -> (the document around its <Code>/<Message>, type).
_XML_ERRORS = {
    "ec2": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>{}</Error></Errors>'
        f"<RequestID>{_REQUEST_ID}</RequestID></Response>",
        "text/xml",
    ),
    "rest-xml": (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>{}'
        "<RequestId>0000000000000000</RequestId></Error>",
        "application/xml",
    ),
    "query": (
        "<ErrorResponse><Error><Type>Sender</Type>{}</Error>"
        f"<RequestId>{_REQUEST_ID}</RequestId></ErrorResponse>",
        "text/xml",
    ),
}


def error(service: str, code: str, message: str, status: int, extra: str = "") -> AwsError:
    """AWS's error body for `service`'s protocol (json, query, ec2, rest-xml); `extra` is
    S3's (rest-xml) further elements."""
    proto = "rest-xml" if service == "s3" else actions.protocol(service)
    if proto.startswith("json") or proto == "rest-json":
        body = json.dumps({"__type": code, "message": message})
        return AwsError(status, body, "application/x-amz-json-1.1", code)
    document, content_type = _XML_ERRORS.get(proto, _XML_ERRORS["query"])
    fields = f"<Code>{code}</Code><Message>{escape(message)}</Message>"
    if proto == "rest-xml":
        fields += extra
    return AwsError(status, document.format(fields), content_type, code)


def auth_error(service: str, exc: AuthFailure) -> AwsError:
    """An AuthFailure in the service's own spelling."""
    proto = "rest-xml" if service == "s3" else actions.protocol(service)
    query, ec2, s3 = AUTH_CODES.get(exc.code, (exc.code, "AuthFailure", exc.code))
    if proto == "rest-xml":
        if exc.unsigned:
            extra = f"<HeadersNotSigned>{escape(', '.join(exc.unsigned))}</HeadersNotSigned>"
            msg = "There were headers present in the request which were not signed"
            return error(service, "AccessDenied", msg, 403, extra)
        bad_request = ("AuthorizationHeaderMalformed", "XAmzContentSHA256Mismatch")
        status = 400 if s3 in bad_request or s3.startswith("AuthorizationQuery") else 403
        return error(service, s3, exc.message, status)
    if proto == "ec2":
        message = EC2_AUTH_MESSAGE if ec2 == "AuthFailure" else exc.message
        return error(service, ec2, message, 401)
    if proto.startswith("json") or proto == "rest-json":
        status = 403 if exc.code == "MissingAuthenticationTokenException" else 400
        return error(service, exc.code, exc.message, status)
    return error(service, query, exc.message, 403 if query != "IncompleteSignature" else 400)


def denied(service: str, caller: Caller, need: actions.Need, reason: str) -> AwsError:
    """AccessDenied in the service's spelling, with AWS's "User: ... is not authorized" text."""
    text = (
        f"User: {caller.display_arn if caller.kind != 'anonymous' else 'anonymous'} is not "
        f"authorized to perform: {need.action} on resource: {need.resource} {reason}"
    )
    proto = "rest-xml" if service == "s3" else actions.protocol(service)
    if proto == "ec2":
        text = f"You are not authorized to perform this operation. {text}"
        return error(service, "UnauthorizedOperation", text, 403)
    if proto.startswith("json") or proto == "rest-json":
        return error(service, "AccessDeniedException", text, 400)
    if service == "s3" and caller.kind == "anonymous":
        return error(service, "AccessDenied", "Access Denied", 403)
    return error(service, "AccessDenied", text, 403)


# ------------------------------------------------------------------ the hooks


def _raw_body(self: Any) -> bytes:
    request = getattr(self, "normalized_request", None)
    kept = request.environ.get("enclavekit.body") if request is not None else None
    if isinstance(kept, bytes):
        return kept
    body = getattr(self, "raw_body", None)
    if body is None:
        body = getattr(self, "body", b"")
    if isinstance(body, str):
        return body.encode()
    return body if isinstance(body, bytes) else b""


def _caller(self: Any, service: str, *, anonymous_ok: bool = False) -> Caller:
    headers = dict(self.headers.items())
    has_auth = any(k.lower() == "authorization" for k in headers)
    presigned = "X-Amz-Credential=" in urlsplit(self.uri).query
    if not has_auth and anonymous_ok and not presigned:
        return Caller("", "", "*", "anonymous", "anonymous")
    try:
        if not has_auth and anonymous_ok:
            return authenticate_presigned(self.method, self.uri, headers)
        return authenticate(self.method, self.uri, headers, _raw_body(self))
    except AuthFailure as exc:
        log.warning("%s %s: %s (%s)", service, self.method, exc.code, exc.message)
        raise auth_error(service, exc) from None


def _params(self: Any, service: str) -> Mapping[str, Any]:
    proto = actions.protocol(service)
    if proto.startswith("json"):
        try:
            body = json.loads(self.body or "{}")
        except (TypeError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}
    return {k: (v[0] if isinstance(v, list) and v else v) for k, v in self.querystring.items()}


def _authorize(self: Any, service: str, caller: Caller, needs: list[actions.Need]) -> None:
    identity = models.caller_policies(caller)
    for need in needs:
        res = models.resource_policy(service, need.action, need.resource, self.region)
        keys = models.request_keys(caller, self.region, need.keys)
        if res.owner:
            keys["aws:ResourceAccount"] = res.owner
        verdict = models.decide(caller, need.action, need.resource, keys, identity, res)
        if not verdict.allowed:
            log.warning(
                "AccessDenied: %s is not authorized to perform: %s on resource: %s %s",
                caller.display_arn,
                need.action,
                need.resource,
                verdict.reason,
            )
            raise denied(service, caller, need, verdict.reason)
        if need.action == "sts:AssumeRole":  # who acts as whom: the log says so
            log.info("IAM: %s assumes %s", caller.display_arn, need.resource)


def normal_action(self: Any, resource: str = "*") -> None:
    """Every non-S3, non-KMS call: authenticate, map to IAM, evaluate."""
    if not _STATE["enabled"]:
        return
    service = self.boto3_service_name
    if service in ("kms", "s3"):
        return  # KMS authorizes itself; S3 calls the S3 hook
    caller = _caller(self, service)
    if service == "cloudformation":  # it acts as this caller when a stack has no RoleARN
        _REQUEST.caller = caller
    op = self._get_action()
    try:
        needs = actions.needs(service, self.region, caller.account, op, _params(self, service))
    except Exception as exc:  # noqa: BLE001 - a mapping bug must not become a 500
        log.warning("IAM mapping of %s:%s failed (%s): denied", service, op, exc)
        msg = f"{service}:{op} could not be authorized"
        raise error(service, "AccessDenied", msg, 403) from None
    if needs is None:
        _warn_unmapped(f"{service}:{op}")
        return
    if caller.kind == "service" and not all(n.action.startswith("sts:") for n in needs):
        raise denied(service, caller, needs[0], "because service principals call STS only")
    _authorize(self, service, caller, needs)


def s3_action(self: Any, bucket_name: str | None = None, key_name: str | None = None) -> None:
    """Every S3 REST call: moto names the IAM action; bucket policies apply; anonymous allowed
    only where a bucket policy grants `*`."""
    if not _STATE["enabled"]:
        return
    op = self._get_action()
    action = "s3:" + S3_IAM_ACTION.get(op, op)
    if key_name:
        resource = f"arn:aws:s3:::{bucket_name}/{key_name}"
    elif bucket_name:
        resource = f"arn:aws:s3:::{bucket_name}"
    else:
        resource = "*"
    caller = _caller(self, "s3", anonymous_ok=True)
    keys: dict[str, Any] = {}
    if action in ("s3:ListBucket", "s3:ListBucketVersions"):
        qs = self.querystring
        for name in ("prefix", "delimiter", "max-keys"):
            if name in qs:
                v = qs[name]
                keys[f"s3:{name}"] = v[0] if isinstance(v, list) else v
    if caller.kind == "anonymous":
        caller = Caller("", _bucket_owner(bucket_name), "*", "anonymous", "anonymous")
    _authorize(self, "s3", caller, [actions.Need(action, resource, keys)])


def _bucket_owner(bucket: str | None) -> str:
    from enclavekit.localenv import LOCAL_ACCOUNT

    if bucket:
        res = models.resource_policy("s3", "s3:GetObject", f"arn:aws:s3:::{bucket}", "")
        if res.owner:
            return res.owner
    return LOCAL_ACCOUNT


def _warn_unmapped(name: str) -> None:
    with _LOCK:
        if name in _UNMAPPED_SEEN:
            return
        _UNMAPPED_SEEN.add(name)
    log.warning("IAM: %s is not mapped to an IAM action and resource: allowed unchecked", name)


def unmapped_seen() -> list[str]:
    """The unmapped calls answered so far (each was allowed with a warning)."""
    with _LOCK:
        return sorted(_UNMAPPED_SEEN)


def request_caller() -> Caller | None:
    """The authenticated caller of the CloudFormation request this thread serves."""
    return getattr(_REQUEST, "caller", None)


def set_enabled(enabled: bool) -> None:
    _STATE["enabled"] = enabled


def enabled() -> bool:
    return _STATE["enabled"]
