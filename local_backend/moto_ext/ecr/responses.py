"""GetAuthorizationToken for the local registry: a token the registry checks, and the
registry's loopback address as `proxyEndpoint` (what cdk-assets gives `docker login`)."""

from __future__ import annotations

import re
from base64 import b64encode
from datetime import UTC, datetime

from moto.core.responses import ActionResult
from moto.ecr.exceptions import InvalidParameterException
from moto.ecr.responses import ECRResponse

from . import models

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def _principal(response: ECRResponse) -> str:
    """The caller's ARN (the IAM layer has checked the signature before moto runs)."""
    from ..identity import AuthFailure, lookup

    found = _CREDENTIAL.search(response.headers.get("Authorization", "") or "")
    if not found:
        return f"arn:aws:iam::{response.current_account}:root"
    try:
        caller, _ = lookup(found.group(1), response.headers.get("X-Amz-Security-Token"))
    except AuthFailure:
        return f"arn:aws:iam::{response.current_account}:root"
    return caller.display_arn


def get_authorization_token(self: ECRResponse) -> ActionResult:
    """One token per registry id asked for; only the caller's own account has a registry here."""
    registry_ids = self._get_param("registryIds") or [self.current_account]
    principal = _principal(self)
    data = []
    for registry_id in registry_ids:
        if registry_id != self.current_account:
            raise InvalidParameterException(
                f"Invalid parameter at 'registryIds': the local endpoint issues tokens for the "
                f"caller's own registry {self.current_account} only, found {registry_id}"
            )
        claims = models.issue_token(registry_id, self.region, principal)
        token = b64encode(f"AWS:{models.encode_token(claims)}".encode()).decode()
        data.append(
            {
                "authorizationToken": token,
                "expiresAt": datetime.fromtimestamp(claims.expires, UTC),
                "proxyEndpoint": f"http://{models.registry_host()}",
            }
        )
    return ActionResult({"authorizationData": data})


def install() -> None:
    ECRResponse.get_authorization_token = get_authorization_token  # type: ignore[method-assign]
