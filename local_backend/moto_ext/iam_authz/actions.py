"""Which IAM action and resource ARNs a call needs: botocore's service model plus a table.

The IAM service prefix comes from the model's `signingName` (with the few exceptions AWS has);
the action name is the operation name (S3: moto's own REST-to-IAM mapping). Resource ARNs come
from the request parameters through per-service rules below; an operation whose resource is
not a parameter is judged against `*` only where IAM itself lists it with `*` (listing,
describing, creating). A service without rules here is *unmapped*: its calls are allowed with a
logged warning naming them (`unmapped_operations` lists what remains).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# botocore signingName -> IAM service prefix, where they differ
IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses", "execute-api": "apigateway"}
# Operations that need no permission at all (AWS answers them for any authenticated caller).
NO_PERMISSION = frozenset({("sts", "GetCallerIdentity")})


@dataclass(frozen=True)
class Need:
    """One authorization a call needs: `action` on `resource`, with extra condition keys."""

    action: str
    resource: str
    keys: Mapping[str, Any] = field(default_factory=dict)


Params = Mapping[str, Any]
Rule = Callable[[str, str, str, Params], list[Need]]


@lru_cache(maxsize=64)
def service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def iam_prefix(service: str) -> str:
    meta = service_model(service).metadata
    signing = meta.get("signingName") or meta.get("endpointPrefix") or service
    return IAM_PREFIX.get(signing, signing)


def protocol(service: str) -> str:
    return str(service_model(service).metadata.get("protocol", ""))


def values(params: Params, name: str) -> list[str]:
    """A parameter's values: JSON lists, or query-protocol `Name.N` / `Name.member.N` keys."""
    v = params.get(name)
    if isinstance(v, list):
        return [str(x) for x in v if isinstance(x, str | int)]
    if isinstance(v, str | int):
        return [str(v)]
    pat = re.compile(rf"^{re.escape(name)}(\.member)?\.\d+$")
    return [str(params[k]) for k in sorted(params) if pat.match(k)]


def first(params: Params, name: str) -> str | None:
    found = values(params, name)
    return found[0] if found else None


# ------------------------------------------------------------------ per-service rules


def _ssm(region: str, account: str, op: str, p: Params) -> list[Need]:
    names = values(p, "Name") or values(p, "Names")
    if op == "GetParametersByPath":
        names = values(p, "Path")
    tagging = op in ("AddTagsToResource", "RemoveTagsFromResource", "ListTagsForResource")
    if tagging and p.get("ResourceType") == "Parameter":
        names = values(p, "ResourceId")
    if not names:
        return [Need(f"ssm:{op}", "*")]
    return [
        Need(f"ssm:{op}", f"arn:aws:ssm:{region}:{account}:parameter/{n.lstrip('/')}")
        for n in names
    ]


def _iam(region: str, account: str, op: str, p: Params) -> list[Need]:
    from moto.iam.models import iam_backends

    backend = iam_backends[account]["aws"]
    out: list[Need] = []
    role = first(p, "RoleName")
    if role:
        found = next((r for r in list(backend.roles.values()) if r.name == role), None)
        path = found.path if found is not None else (first(p, "Path") or "/")
        out.append(Need(f"iam:{op}", f"arn:aws:iam::{account}:role{path}{role}"))
    user = first(p, "UserName")
    if user:
        found = backend.users.get(user)
        path = found.path if found is not None else (first(p, "Path") or "/")
        out.append(Need(f"iam:{op}", f"arn:aws:iam::{account}:user{path}{user}"))
    group = first(p, "GroupName")
    if group:
        out.append(Need(f"iam:{op}", f"arn:aws:iam::{account}:group/{group}"))
    profile = first(p, "InstanceProfileName")
    if profile and not role:
        out.append(Need(f"iam:{op}", f"arn:aws:iam::{account}:instance-profile/{profile}"))
    arn = first(p, "PolicyArn")
    if arn and not (role or user or group):
        out.append(Need(f"iam:{op}", arn))
    return out or [Need(f"iam:{op}", "*")]


def _sts(region: str, account: str, op: str, p: Params) -> list[Need]:
    arn = first(p, "RoleArn")
    if not arn:
        return [Need(f"sts:{op}", "*")]
    keys: dict[str, Any] = {"sts:RoleSessionName": first(p, "RoleSessionName")}
    external = first(p, "ExternalId")
    if external is not None:
        keys["sts:ExternalId"] = external
    needs = [Need(f"sts:{op}", arn, keys)]
    if any(k.startswith("Tags.") for k in p) or p.get("Tags"):
        needs.append(Need("sts:TagSession", arn, keys))
    return needs


_EC2_IDS = {
    "InstanceId": "instance",
    "VolumeId": "volume",
    "ImageId": "image",
    "SubnetId": "subnet",
    "VpcId": "vpc",
    "GroupId": "security-group",
    "LaunchTemplateId": "launch-template",
    "NetworkInterfaceId": "network-interface",
}


def _ec2(region: str, account: str, op: str, p: Params) -> list[Need]:
    cert = first(p, "CertificateArn")
    if cert:
        needs = [Need(f"ec2:{op}", cert)]
        role = first(p, "RoleArn")
        if role:
            needs.append(Need(f"ec2:{op}", role))
        return needs
    if op.startswith(("Describe", "Get", "Create", "Run", "Import", "Allocate")):
        return [Need(f"ec2:{op}", "*")]
    needs = []
    for name, kind in _EC2_IDS.items():
        ids = values(p, name) or values(p, name + "s")
        for i in ids:
            owner = "" if kind == "image" else account
            needs.append(Need(f"ec2:{op}", f"arn:aws:ec2:{region}:{owner}:{kind}/{i}"))
    return needs or [Need(f"ec2:{op}", "*")]


def _acm(region: str, account: str, op: str, p: Params) -> list[Need]:
    cert = first(p, "CertificateArn")
    return [Need(f"acm:{op}", cert or "*")]


def _secretsmanager(region: str, account: str, op: str, p: Params) -> list[Need]:
    sid = first(p, "SecretId")
    if not sid:
        return [Need(f"secretsmanager:{op}", "*")]
    if not sid.startswith("arn:"):
        from moto.secretsmanager.models import secretsmanager_backends

        secrets = secretsmanager_backends[account][region].secrets
        found = secrets.get(sid) if hasattr(secrets, "get") else None
        sid = (
            found.arn
            if found is not None
            else (f"arn:aws:secretsmanager:{region}:{account}:secret:{sid}")
        )
    return [Need(f"secretsmanager:{op}", sid)]


def _cloudformation(region: str, account: str, op: str, p: Params) -> list[Need]:
    name = first(p, "StackName")
    needs: list[Need] = []
    if name:
        if not name.startswith("arn:"):
            name = f"arn:aws:cloudformation:{region}:{account}:stack/{name}/*"
        needs.append(Need(f"cloudformation:{op}", name))
    else:
        needs.append(Need(f"cloudformation:{op}", "*"))
    role = first(p, "RoleARN")
    if role and op in ("CreateStack", "UpdateStack", "CreateChangeSet", "DeleteStack"):
        passed = {"iam:PassedToService": "cloudformation.amazonaws.com"}
        needs.append(Need("iam:PassRole", role, passed))
    return needs


def _ecr(region: str, account: str, op: str, p: Params) -> list[Need]:
    """ECR: the repositories a call names (`repositoryName`, or DescribeRepositories'
    `repositoryNames`; the registry is the caller's account unless `registryId` says
    otherwise), else every resource."""
    names = values(p, "repositoryName") or values(p, "repositoryNames")
    if not names:
        return [Need(f"ecr:{op}", "*")]
    registry = first(p, "registryId") or account
    return [Need(f"ecr:{op}", f"arn:aws:ecr:{region}:{registry}:repository/{n}") for n in names]


def _star(prefix: str) -> Rule:
    def rule(region: str, account: str, op: str, p: Params) -> list[Need]:
        return [Need(f"{prefix}:{op}", "*")]

    return rule


RULES: dict[str, Rule] = {
    "ssm": _ssm,
    "iam": _iam,
    "sts": _sts,
    "ec2": _ec2,
    "acm": _acm,
    "secretsmanager": _secretsmanager,
    "cloudformation": _cloudformation,
    "autoscaling": _star("autoscaling"),
    "ecr": _ecr,
}
# S3 is mapped by moto itself (its REST-to-IAM table); KMS authorizes in its own extension.
SELF_MAPPED = frozenset({"s3", "kms"})


def needs(service: str, region: str, account: str, op: str, params: Params) -> list[Need] | None:
    """What the call needs, [] when nothing, None when the service is unmapped."""
    rule = RULES.get(service)
    if rule is None:
        return None
    if (service, op) in NO_PERMISSION:
        return []
    return rule(region, account, op, params)


# moto module name -> botocore service name, where removing dashes is not enough
_MOTO_TO_BOTOCORE = {"awslambda": "lambda", "elb": "elb", "elbv2": "elbv2"}


def served_services() -> list[str]:
    """botocore names of the services moto answers (its URL index), for the unmapped count."""
    import botocore.session
    from moto.backend_index import backend_url_patterns

    names = {n.replace("-", ""): n for n in botocore.session.get_session().get_available_services()}
    out = set()
    for module, _pattern in backend_url_patterns:
        found = names.get(_MOTO_TO_BOTOCORE.get(module, module).replace("-", ""))
        if found is not None:
            out.add(found)
    return sorted(out)


def unmapped_operations(services: list[str]) -> dict[str, list[str]]:
    """Per served service without rules, its operations (every call there is unmapped)."""
    out: dict[str, list[str]] = {}
    for svc in services:
        if svc in RULES or svc in SELF_MAPPED:
            continue
        try:
            out[svc] = sorted(service_model(svc).operation_names)
        except Exception:  # noqa: BLE001 - a moto service botocore does not know
            out[svc] = ["*"]
    return out
