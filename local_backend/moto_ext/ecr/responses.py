"""GetAuthorizationToken for the local registry: a token the registry checks, and the
registry's loopback address as `proxyEndpoint` (what cdk-assets gives `docker login`)."""

from __future__ import annotations

import re
from base64 import b64encode
from datetime import UTC, datetime

from moto.core.responses import ActionResult
from moto.ecr.exceptions import InvalidParameterException
from moto.ecr.responses import ECRResponse

from ..identity import Caller
from . import models

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def _caller(response: ECRResponse) -> Caller:
    """Who asks (the IAM layer has checked the signature before moto runs; with IAM off, an
    unknown key is the account root, as moto treats every caller)."""
    from ..identity import AuthFailure, lookup

    root = f"arn:aws:iam::{response.current_account}:root"
    found = _CREDENTIAL.search(response.headers.get("Authorization", "") or "")
    if found:
        try:
            return lookup(found.group(1), response.headers.get("X-Amz-Security-Token"))[0]
        except AuthFailure:
            pass
    return Caller("", response.current_account, root, root, "root")


def get_authorization_token(self: ECRResponse) -> ActionResult:
    """One token per registry id asked for; only the caller's own account has a registry here."""
    registry_ids = self._get_param("registryIds") or [self.current_account]
    caller = _caller(self)
    data = []
    for registry_id in registry_ids:
        if registry_id != self.current_account:
            raise InvalidParameterException(
                f"Invalid parameter at 'registryIds': the local endpoint issues tokens for the "
                f"caller's own registry {self.current_account} only, found {registry_id}"
            )
        claims = models.issue_token(registry_id, self.region, caller)
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
