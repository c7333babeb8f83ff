"""The facts rules judge: roles with their identity policies, keys with their key policies,
enclave hosts and ACM associations, linked across resources through resolved intrinsics.

Built once per lint run; rules are pure functions of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from enclavekit.errors import PolicyDocumentError
from enclavekit.lint.model import Location
from enclavekit.lint.resolve import ACCOUNT, PARTITION, REGION, Resolver, assoc_attr, key_id_of
from enclavekit.lint.templates import Resource, Template
from enclavekit.policy import Policy, RequestContext, parse_policy

HOST_METADATA = "enclavekit:host"
# Operations that accept a Recipient (attestation document): KMS Developer Guide.
ATTESTED_ACTIONS = (
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
    "kms:DeriveSharedSecret",
)
ATTESTATION_PREFIX = "kms:recipientattestation"

# What CloudFormation puts on a key created without KeyPolicy.
_DEFAULT_KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{PARTITION}:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


@dataclass(frozen=True)
class PolicyDoc:
    """A parsed policy document and where it was written."""

    location: Location
    raw: Mapping[str, Any]
    policy: Policy
    name: str


@dataclass(frozen=True)
class RoleFact:
    template: Template
    resource: Resource
    arn: str
    name: str
    path: str
    policies: tuple[PolicyDoc, ...]


@dataclass(frozen=True)
class KeyFact:
    template: Template
    resource: Resource
    arn: str
    doc: PolicyDoc | None  # None when the key policy itself is not valid grammar
    explicit_policy: bool

    @property
    def attested(self) -> bool:
        """The key policy binds some statement to an attestation (PCR or image digest)."""
        return self.doc is not None and any(
            c.key.lower().startswith(ATTESTATION_PREFIX)
            for s in self.doc.policy.statements
            for c in s.conditions
        )


@dataclass(frozen=True)
class HostFact:
    template: Template
    resource: Resource
    kind: str  # "instance" | "launch-template"
    instance_type: str | None
    enclave_enabled: bool
    hibernation: bool
    http_tokens: str | None
    role: RoleFact | None
    metadata: Mapping[str, Any] | None


@dataclass(frozen=True)
class AssociationFact:
    template: Template
    resource: Resource
    role: RoleFact | None
    role_arn: str
    bucket: str
    object_key: str
    kms_key_id: str


def is_attestation_key(name: str) -> bool:
    return name.lower().startswith(ATTESTATION_PREFIX)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


@dataclass
class World:
    """Everything the rules need, computed lazily from the templates of one run."""

    templates: tuple[Template, ...]
    policy_errors: list[tuple[Location, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resolvers = {t.name: Resolver(t) for t in self.templates}
        self._props: dict[tuple[str, str], Mapping[str, Any]] = {}

    # --------------------------------------------------------------- basics
    def resources(self, *types: str) -> Iterator[tuple[Template, Resource]]:
        for tpl in self.templates:
            for res in tpl.resources.values():
                if not types or res.type in types:
                    yield tpl, res

    def props(self, tpl: Template, res: Resource) -> Mapping[str, Any]:
        key = (tpl.name, res.logical_id)
        if key not in self._props:
            out = self.resolvers[tpl.name].resolve(dict(res.properties))
            self._props[key] = out if isinstance(out, dict) else {}
        return self._props[key]

    def location(self, tpl: Template, res: Resource | None, pointer: str | None = None) -> Location:
        if res is None:
            return Location(str(tpl.path), pointer=pointer)
        return Location(str(tpl.path), res.logical_id, res.line, res.cdk_path, pointer)

    def _parse(
        self, tpl: Template, res: Resource, raw: Any, pointer: str, name: str
    ) -> PolicyDoc | None:
        loc = self.location(tpl, res, pointer)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                self.policy_errors.append((loc, f"{name}: expected a JSON policy document"))
                return None
        try:
            policy = parse_policy(raw)
        except PolicyDocumentError as exc:
            self.policy_errors.append((loc, f"{name}: {exc}"))
            return None
        return PolicyDoc(loc, raw, policy, name)

    # --------------------------------------------------------------- roles
    @cached_property
    def roles(self) -> tuple[RoleFact, ...]:
        out: list[RoleFact] = []
        # Policies attached from the outside, by role name, per template.
        attached: dict[tuple[str, str], list[PolicyDoc]] = {}
        managed_by_arn: dict[str, PolicyDoc] = {}
        for tpl, res in self.resources(
            "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"
        ):
            p = self.props(tpl, res)
            doc = self._parse(
                tpl,
                res,
                p.get("PolicyDocument"),
                "/Properties/PolicyDocument",
                f"policy {res.logical_id}",
            )
            if doc is None:
                continue
            roles = p.get("Roles") or []
            if res.type == "AWS::IAM::RolePolicy":
                roles = [p.get("RoleName")]
            for r in roles if isinstance(roles, list) else []:
                if isinstance(r, str):
                    attached.setdefault((tpl.name, r), []).append(doc)
            if res.type == "AWS::IAM::ManagedPolicy":
                managed_by_arn[str(self.resolvers[tpl.name].ref(res.logical_id))] = doc
        for tpl, res in self.resources("AWS::IAM::Role"):
            p = self.props(tpl, res)
            resolver = self.resolvers[tpl.name]
            name = str(resolver.ref(res.logical_id))
            docs: list[PolicyDoc] = []
            for i, pol in enumerate(p.get("Policies") or []):
                if isinstance(pol, dict):
                    doc = self._parse(
                        tpl,
                        res,
                        pol.get("PolicyDocument"),
                        f"/Properties/Policies/{i}/PolicyDocument",
                        f"inline policy {pol.get('PolicyName', i)} of role {res.logical_id}",
                    )
                    if doc:
                        docs.append(doc)
            for arn in p.get("ManagedPolicyArns") or []:
                if isinstance(arn, str) and arn in managed_by_arn:
                    docs.append(managed_by_arn[arn])
            docs.extend(attached.get((tpl.name, name), []))
            path = p.get("Path") if isinstance(p.get("Path"), str) else "/"
            out.append(
                RoleFact(tpl, res, resolver.role_arn(res.logical_id), name, path, tuple(docs))
            )
        return tuple(out)

    def role_by_arn(self, arn: str) -> RoleFact | None:
        return next((r for r in self.roles if r.arn == arn), None)

    def role_by_id(self, tpl: Template, logical_id: str) -> RoleFact | None:
        return next(
            (r for r in self.roles if r.template is tpl and r.resource.logical_id == logical_id),
            None,
        )

    def role_by_name(self, tpl: Template, name: str) -> RoleFact | None:
        return next((r for r in self.roles if r.template is tpl and r.name == name), None)

    # --------------------------------------------------------------- keys
    @cached_property
    def keys(self) -> tuple[KeyFact, ...]:
        out: list[KeyFact] = []
        for tpl, res in self.resources("AWS::KMS::Key"):
            p = self.props(tpl, res)
            raw = p.get("KeyPolicy")
            explicit = raw is not None
            doc = self._parse(
                tpl,
                res,
                raw if explicit else _DEFAULT_KEY_POLICY,
                "/Properties/KeyPolicy",
                f"key policy of {res.logical_id}",
            )
            arn = f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{key_id_of(res.logical_id)}"
            out.append(KeyFact(tpl, res, arn, doc, explicit))
        return tuple(out)

    def key_by_id(self, tpl: Template, logical_id: str) -> KeyFact | None:
        return next(
            (k for k in self.keys if k.template is tpl and k.resource.logical_id == logical_id),
            None,
        )

    # --------------------------------------------------------------- hosts
    def _launch_template(self, tpl: Template, ref: Any) -> tuple[Resource, Mapping] | None:
        if not isinstance(ref, dict):
            return None
        want_id, want_name = ref.get("LaunchTemplateId"), ref.get("LaunchTemplateName")
        for t, res in self.resources("AWS::EC2::LaunchTemplate"):
            if t is not tpl:
                continue
            p = self.props(t, res)
            if (want_id and want_id == f"lt-{res.logical_id}") or (
                want_name and want_name == p.get("LaunchTemplateName")
            ):
                return res, p.get("LaunchTemplateData") or {}
        return None

    def _role_of_profile(self, tpl: Template, profile: Any) -> RoleFact | None:
        if not isinstance(profile, str):
            return None
        resolver = self.resolvers[tpl.name]
        for t, res in self.resources("AWS::IAM::InstanceProfile"):
            if t is not tpl:
                continue
            if profile in (
                str(resolver.ref(res.logical_id)),
                str(resolver.get_att(res.logical_id, "Arn")),
            ):
                roles = self.props(t, res).get("Roles") or []
                for r in roles if isinstance(roles, list) else []:
                    role = self.role_by_name(tpl, str(r))
                    if role:
                        return role
        return None

    @cached_property
    def hosts(self) -> tuple[HostFact, ...]:
        out: list[HostFact] = []
        referenced_lts: set[tuple[str, str]] = set()
        for tpl, res in self.resources("AWS::EC2::Instance"):
            p = self.props(tpl, res)
            lt = self._launch_template(tpl, p.get("LaunchTemplate"))
            ltd: Mapping[str, Any] = lt[1] if lt else {}
            if lt:
                referenced_lts.add((tpl.name, lt[0].logical_id))
            enabled = _truthy(
                (p.get("EnclaveOptions") or ltd.get("EnclaveOptions") or {}).get("Enabled")
            )
            meta = res.metadata.get(HOST_METADATA)
            if not enabled and meta is None:
                continue
            hib = p.get("HibernationOptions") or ltd.get("HibernationOptions") or {}
            mopts = p.get("MetadataOptions") or ltd.get("MetadataOptions") or {}
            itype = p.get("InstanceType") or ltd.get("InstanceType")
            role = self._host_role(
                tpl, meta, p.get("IamInstanceProfile") or _profile_of(ltd.get("IamInstanceProfile"))
            )
            out.append(
                HostFact(
                    tpl,
                    res,
                    "instance",
                    itype if isinstance(itype, str) else None,
                    enabled,
                    _truthy(hib.get("Configured")),
                    mopts.get("HttpTokens"),
                    role,
                    meta if isinstance(meta, dict) else None,
                )
            )
        for tpl, res in self.resources("AWS::EC2::LaunchTemplate"):
            ltd = self.props(tpl, res).get("LaunchTemplateData") or {}
            enabled = _truthy((ltd.get("EnclaveOptions") or {}).get("Enabled"))
            meta = res.metadata.get(HOST_METADATA)
            if meta is None and (not enabled or (tpl.name, res.logical_id) in referenced_lts):
                continue
            itype = ltd.get("InstanceType")
            role = self._host_role(tpl, meta, _profile_of(ltd.get("IamInstanceProfile")))
            out.append(
                HostFact(
                    tpl,
                    res,
                    "launch-template",
                    itype if isinstance(itype, str) else None,
                    enabled,
                    _truthy((ltd.get("HibernationOptions") or {}).get("Configured")),
                    (ltd.get("MetadataOptions") or {}).get("HttpTokens"),
                    role,
                    meta if isinstance(meta, dict) else None,
                )
            )
        return tuple(out)

    def _host_role(self, tpl: Template, meta: Any, profile: Any) -> RoleFact | None:
        if isinstance(meta, dict) and isinstance(meta.get("role"), str):
            role = self.role_by_id(tpl, meta["role"])
            if role:
                return role
        return self._role_of_profile(tpl, profile)

    def host_keys(self, host: HostFact) -> list[KeyFact]:
        """Keys bound to this host's image: named in its Metadata, else those granting its role
        an attested action."""
        ids: list[str] = []
        if host.metadata:
            ids.extend(k for k in host.metadata.get("attested_keys") or [] if isinstance(k, str))
            for s in host.metadata.get("secrets") or []:
                if isinstance(s, dict) and isinstance(s.get("key"), str):
                    ids.append(s["key"])
        keys = [k for k in (self.key_by_id(host.template, i) for i in dict.fromkeys(ids)) if k]
        if not keys and host.role:
            keys = [k for k in self.keys if k.attested and _names_principal(k, host.role.arn)]
        return keys

    # --------------------------------------------------------------- ACM associations
    @cached_property
    def associations(self) -> tuple[AssociationFact, ...]:
        out: list[AssociationFact] = []
        for tpl, res in self.resources("AWS::EC2::EnclaveCertificateIamRoleAssociation"):
            p = self.props(tpl, res)
            role_arn = p.get("RoleArn")
            role_arn = role_arn if isinstance(role_arn, str) else ""
            role = self.role_by_arn(role_arn)
            lid = res.logical_id
            out.append(
                AssociationFact(
                    tpl,
                    res,
                    role,
                    role_arn,
                    assoc_attr(lid, "CertificateS3BucketName"),
                    assoc_attr(lid, "CertificateS3ObjectKey"),
                    assoc_attr(lid, "EncryptionKmsKeyId"),
                )
            )
        return tuple(out)

    # --------------------------------------------------------------- requests
    @staticmethod
    def unattested(principal: str, action: str, resource: str) -> RequestContext:
        """A request from `principal` that carries no attestation document."""
        account = (principal.split(":")[4] if principal.count(":") >= 5 else "") or ACCOUNT
        parts = resource.split(":", 5)
        if len(parts) == 6 and parts[2] == "kms":
            # Judged as a same-account key: the templates do not say which account owns it.
            resource = ":".join([*parts[:4], account, parts[5]])
        return RequestContext(
            principal=principal,
            account=account or ACCOUNT,
            action=action,
            resource=resource,
            keys={
                "kms:CallerAccount": account or ACCOUNT,
                "aws:PrincipalArn": principal,
                "aws:PrincipalAccount": account or ACCOUNT,
            },
        )


def _profile_of(spec: Any) -> Any:
    if isinstance(spec, dict):
        return spec.get("Arn") or spec.get("Name")
    return None


def _names_principal(key: KeyFact, arn: str) -> bool:
    if key.doc is None:
        return False
    return any(p.value == arn for s in key.doc.policy.statements for p in (s.principals or ()))
