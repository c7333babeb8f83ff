"""Roles that AWS services assume for you: only where the role's trust policy names them.

Lambda runs a function with its execution role's session (`assumed-role/<role>/<function>`),
CloudFormation acts as a stack's service role: both assume the role as the service principal
(`lambda.amazonaws.com`, `cloudformation.amazonaws.com`), so the trust policy decides, as on
AWS, and the process never sees the account root's key.
"""

from __future__ import annotations

import logging
from typing import Any

from ..identity import Caller
from . import models, responses

log = logging.getLogger("enclavekit.iam")


class ServiceCannotAssume(Exception):
    """The role's trust policy does not let the service assume it."""


def may_assume(service: str, role_arn: str, region: str) -> models.Verdict:
    """Whether the service principal `service` may assume `role_arn` (its trust policy)."""
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    caller = Caller("", account, service, service, "service")
    trust = models.resource_policy("sts", "sts:AssumeRole", role_arn, region)
    if trust.policy is None or not trust.policy.statements:
        return models.Verdict(False, "because the role does not exist or trusts no one")
    keys = models.request_keys(caller, region, {})
    return models.decide(caller, "sts:AssumeRole", role_arn, keys, [], trust)


def assume(service: str, role_arn: str, session_name: str, region: str) -> Any:
    """A session of `role_arn` as `service` gets it (moto's AssumedRole: access_key_id,
    secret_access_key, session_token); ServiceCannotAssume if the trust policy refuses."""
    from moto.sts.models import sts_backends

    if responses.enabled():
        verdict = may_assume(service, role_arn, region)
        if not verdict.allowed:
            raise ServiceCannotAssume(
                f"{service} cannot assume {role_arn}: its trust policy does not allow it"
            )
    log.info("IAM: %s assumes %s", service, role_arn)
    account = role_arn.split(":")[4]
    return sts_backends[account]["aws"].assume_role(
        region_name=region,
        role_session_name=session_name[:64],
        role_arn=role_arn,
        policy="",
        duration=3600,
        external_id="",
    )
