"""AWS's policy evaluation logic for one call, on `enclavekit.policy`'s shared evaluator.

IAM User Guide, "Policy evaluation logic" and "Cross-account policy evaluation logic":
- an explicit Deny in any applicable policy (identity or resource) denies;
- same account: a resource-based policy that names the caller allows by itself, one that names
  the account (its root) delegates to the caller's identity policies, and an identity policy
  allows by itself — except where the resource policy is the only gate (role trust policies);
- another account: the resource policy must allow the caller or its account, *and* the caller's
  identity policies must allow;
- the account root has every identity permission in its own account (resource-policy denies
  still apply); service principals and anonymous callers only have what resource policies give.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from enclavekit.errors import PolicyDocumentError
from enclavekit.policy import Policy, RequestContext, parse_policy, statement_matches
from enclavekit.policy.evaluate import request_matches, root_arn

from ..identity import Caller, stored_identity_policies

log = logging.getLogger("enclavekit.iam")
DATA = Path(__file__).resolve().parent / "data" / "aws_managed_policies.json"
ENCLAVE_CERT_BUCKET_PREFIX = "aws-ec2-enclave-certificate-"
PRINCIPAL_TYPE = {
    "root": "Account",
    "user": "User",
    "role": "AssumedRole",
    "service": "Service",
    "anonymous": "Anonymous",
}


@dataclass(frozen=True)
class Verdict:
    """The answer for one (action, resource): `reason` is AWS's AccessDenied phrase."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class ResourcePolicy:
    """A resource-based policy and the account that owns the resource."""

    policy: Policy | None
    owner: str | None
    required: bool = False  # True: identity policies alone never allow (role trust policies)


@lru_cache(maxsize=1024)
def _parse(text: str) -> Policy | None:
    try:
        return parse_policy(text)
    except PolicyDocumentError:
        return None  # IAM would have refused it; moto stores it anyway: it allows nothing


def parse_text(doc: Any) -> Policy | None:
    """A policy from moto's stored form (dict, JSON text or URL-encoded JSON text)."""
    if doc is None or doc == "":
        return None
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", "replace")
    if isinstance(doc, str):
        return _parse_stored(doc)  # cached on the stored text: no JSON work per request
    return _parse_doc(doc)


@lru_cache(maxsize=1024)
def _parse_stored(text: str) -> Policy | None:
    if not text.lstrip().startswith("{"):
        from urllib.parse import unquote

        text = unquote(text)
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return _parse_doc(doc)


def _parse_doc(doc: Any) -> Policy | None:
    if isinstance(doc, dict) and isinstance(doc.get("Statement"), list):
        # moto's CloudFormation renders `Fn::If [..., Ref AWS::NoValue]` list items as null;
        # CloudFormation removes them (the CDK bootstrap roles' trust policies have two).
        doc = {**doc, "Statement": [st for st in doc["Statement"] if st is not None]}
    return _parse(json.dumps(doc, sort_keys=True))


def caller_policies(caller: Caller) -> list[Policy]:
    """The caller's identity policies, parsed (cached by document text)."""
    if caller.kind not in ("user", "role"):
        return []
    out = []
    for doc in stored_identity_policies(caller):
        pol = parse_text(doc)
        if pol is not None:
            out.append(pol)
    return out


def request_keys(caller: Caller, region: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Global condition keys of a call. `aws:SecureTransport` is true: clients reach AWS over
    TLS (the loopback endpoint speaks HTTP); keys AWS would not have here (aws:SourceVpc,
    aws:SourceVpce, aws:SourceIp of a VPC) are absent, so conditions on them are false."""
    now = dt.datetime.now(dt.UTC)
    keys: dict[str, Any] = {
        "aws:SecureTransport": "true",
        "aws:RequestedRegion": region,
        "aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:EpochTime": str(int(now.timestamp())),
        "aws:PrincipalType": PRINCIPAL_TYPE[caller.kind],
    }
    if caller.kind in ("root", "user", "role"):
        keys["aws:PrincipalArn"] = caller.principal
        keys["aws:PrincipalAccount"] = caller.account
        if caller.kind == "user" and caller.name:
            keys["aws:username"] = caller.name
    elif caller.kind == "service":
        keys["aws:PrincipalServiceName"] = caller.principal
    keys.update({k: v for k, v in extra.items() if v is not None})
    return keys


def _names_account(policy: Policy, ctx: RequestContext, effect: str) -> list[str]:
    """Statements that name the caller's account (root) and apply to the request."""
    acct_root = root_arn(ctx.account)
    out = []
    for i, s in enumerate(policy.statements):
        if s.effect != effect or s.principals is None:
            continue
        if any(p.kind == "AWS" and p.value == acct_root for p in s.principals) and (
            request_matches(s, ctx)
        ):
            out.append(s.label(i))
    return out


def _matching(policies: Sequence[Policy], ctx: RequestContext, effect: str) -> list[str]:
    return [
        s.label(i)
        for pol in policies
        for i, s in enumerate(pol.statements)
        if s.effect == effect and statement_matches(s, ctx)
    ]


def decide(
    caller: Caller,
    action: str,
    resource: str,
    keys: Mapping[str, Any],
    identity: Sequence[Policy],
    res: ResourcePolicy,
) -> Verdict:
    """AWS's evaluation for one action on one resource (module docstring)."""
    principal = caller.principal if caller.kind != "anonymous" else "*anonymous*"
    ctx = RequestContext(
        principal=principal, account=caller.account, action=action, resource=resource, keys=keys
    )
    rpol = [res.policy] if res.policy is not None else []
    if _matching(rpol, ctx, "Deny"):
        return Verdict(False, "with an explicit deny in a resource-based policy")
    if _matching(identity, ctx, "Deny"):
        return Verdict(False, "with an explicit deny in an identity-based policy")
    direct = bool(_matching(rpol, ctx, "Allow"))
    via_account = bool(res.policy is not None and _names_account(res.policy, ctx, "Allow"))
    if caller.kind in ("service", "anonymous"):
        if direct:
            return Verdict(True, "allowed by a resource-based policy")
        return Verdict(False, f"because no resource-based policy allows the {action} action")
    identity_ok = caller.kind == "root" or bool(_matching(identity, ctx, "Allow"))
    cross = res.owner is not None and res.owner != caller.account
    if cross or res.required:
        if not (direct or via_account):
            return Verdict(False, f"because no resource-based policy allows the {action} action")
        if direct and not cross:
            return Verdict(True, "allowed by a resource-based policy")
        if identity_ok:
            return Verdict(True, "allowed by a resource-based and an identity-based policy")
        return Verdict(False, f"because no identity-based policy allows the {action} action")
    if direct or identity_ok:
        return Verdict(True, "allowed")
    return Verdict(False, f"because no identity-based policy allows the {action} action")


# ------------------------------------------------------------------ resource policies


def resource_policy(service: str, action: str, resource: str, region: str) -> ResourcePolicy:
    """The resource-based policy that governs `resource`, if the service has one."""
    if service == "s3":
        return _bucket_policy(resource)
    if action in ("sts:AssumeRole", "sts:TagSession") and ":role/" in resource:
        return _trust_policy(resource)
    if service == "secretsmanager" and resource.startswith("arn:aws:secretsmanager:"):
        return _secret_policy(resource, region)
    owner = resource.split(":")[4] if resource.count(":") >= 5 else ""
    # "aws" (AWS-managed policies) and "" (S3, global names) are no customer account
    return ResourcePolicy(None, owner if owner.isdigit() else None)


def _bucket_policy(resource: str) -> ResourcePolicy:
    from moto.s3.models import s3_backends

    if not resource.startswith("arn:aws:s3:::") or resource == "arn:aws:s3:::*":
        return ResourcePolicy(None, None)
    bucket = resource[len("arn:aws:s3:::") :].split("/", 1)[0]
    for account, parts in list(s3_backends.items()):
        found = parts["aws"].buckets.get(bucket)
        if found is not None:
            if bucket.startswith(ENCLAVE_CERT_BUCKET_PREFIX):
                return ResourcePolicy(_enclave_certificate_bucket_policy(bucket), account)
            return ResourcePolicy(parse_text(found.policy), account)
    return ResourcePolicy(None, None)


def _enclave_certificate_bucket_policy(bucket: str) -> Policy | None:
    """The AWS-owned ACM-for-Nitro-Enclaves bucket lets each associated role read its own
    object `<role_arn>/<certificate_arn>` (the association's s3:GetObject grant is the
    identity half). Built from the EC2 extension's associations, as they stand now."""
    from ..ec2.certificates import all_associations

    assocs = all_associations()
    statements = [
        {
            "Effect": "Allow",
            "Principal": {"AWS": a.role_arn},
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{a.bucket}/{a.object_key}",
        }
        for a in assocs
        if a.bucket == bucket
    ]
    if not statements:
        return None
    return parse_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))


def _trust_policy(role_arn: str) -> ResourcePolicy:
    from moto.iam.models import iam_backends

    account = role_arn.split(":")[4]
    backend = iam_backends[account]["aws"] if account in iam_backends else None
    role = None
    if backend is not None:
        role = next((r for r in list(backend.roles.values()) if r.arn == role_arn), None)
    if role is None:
        return ResourcePolicy(Policy(statements=()), account, required=True)
    return ResourcePolicy(parse_text(role.assume_role_policy_document), account, required=True)


def _secret_policy(arn: str, region: str) -> ResourcePolicy:
    from moto.secretsmanager.models import secretsmanager_backends

    account = arn.split(":")[4]
    try:
        secrets = secretsmanager_backends[account][region].secrets
        secret = next((s for s in list(secrets.values()) if s.arn == arn), None)
    except (KeyError, AttributeError):
        secret = None
    policy = getattr(secret, "policy", None) if secret is not None else None
    return ResourcePolicy(parse_text(policy), account)


# ------------------------------------------------------------------ AWS-managed policies


@lru_cache(maxsize=1)
def aws_managed_policies() -> dict[str, Any]:
    """name -> {"Path", "DefaultVersionId", "Document"}: the managed policies we ship."""
    return json.loads(DATA.read_text())["policies"]


def install_aws_managed_policies() -> None:
    """Let every IAM backend know the shipped AWS-managed policies (attachable by ARN)."""
    from moto.iam.models import AWSManagedPolicy, IAMBackend

    if getattr(IAMBackend, "_enclavekit_managed", False):
        return
    original = IAMBackend._init_aws_policies

    def _init_aws_policies(self: Any) -> list[Any]:
        loaded = original(self)
        have = {p.name for p in loaded}
        for name, d in aws_managed_policies().items():
            if name not in have:
                loaded.append(
                    AWSManagedPolicy.from_data(name, self.account_id, self.region_name, d)
                )
        return loaded

    IAMBackend._init_aws_policies = _init_aws_policies  # type: ignore[method-assign]
    IAMBackend._enclavekit_managed = True  # type: ignore[attr-defined]
