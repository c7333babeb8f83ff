"""The facts rules judge: roles with their identity policies, keys with their key policies,
enclave hosts and ACM associations, linked across resources through resolved intrinsics.

Built once per lint run; rules are pure functions of it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from enclavekit.attested_kms import ATTESTED_ACTIONS, is_attestation_key
from enclavekit.contract import HOST_METADATA_KEY as HOST_METADATA
from enclavekit.errors import PolicyDocumentError
from enclavekit.lint.model import Location
from enclavekit.lint.resolve import ACCOUNT, PARTITION, REGION, Resolver
from enclavekit.lint.templates import Resource, Template
from enclavekit.lint.userdata import UserData, parse_user_data
from enclavekit.policy import Policy, RequestContext, evaluate_kms, parse_policy

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


class Fact(Protocol):
    """A resource fact of the run (role, key, host, ...): which template, which resource."""

    @property
    def template(self) -> Template: ...

    @property
    def resource(self) -> Resource: ...


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
    named: bool = False  # RoleName written: the same role in every stack of the account


@dataclass(frozen=True)
class KeyFact:
    template: Template
    resource: Resource
    arn: str
    doc: PolicyDoc | None  # None when the key policy itself is not valid grammar
    explicit_policy: bool
    external: bool = False  # a key policy given with --key-policy for a key not in a template

    @property
    def logical_id(self) -> str:
        return self.resource.logical_id

    @property
    def attested(self) -> bool:
        """The key policy binds some statement to an attestation (PCR or image digest)."""
        return self.doc is not None and any(
            is_attestation_key(c.key) for s in self.doc.policy.statements for c in s.conditions
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
    user_data: str | None = None  # after intrinsics; None when the host has none


@dataclass(frozen=True)
class AssociationFact:
    template: Template
    resource: Resource
    role: RoleFact | None
    role_arn: str
    bucket: str
    object_key: str
    kms_key_id: str
    certificate_arn: str = ""


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _obj(value: Any) -> Mapping[str, Any]:
    """`value` when it is an object, else an empty one: templates may hold anything."""
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def tkey(tpl: Template) -> tuple[str, str]:
    """What identifies a template in a run: its file and stack name, never its position."""
    return (str(tpl.path), tpl.name)


@dataclass
class World:
    """Everything the rules need, computed lazily from the templates of one run."""

    templates: tuple[Template, ...]
    policy_errors: list[tuple[Location, str]] = field(default_factory=list)
    # --key-policy KEYID=FILE: (key logical id or key id, file, parsed JSON)
    key_policies: tuple[tuple[str, str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Facts are keyed by template file and logical id, and built in one canonical order,
        # so the order of the inputs never changes a result.
        ordered = sorted(self.templates, key=tkey)
        names = [t.name for t in ordered]
        # Two files with one stack name (a/stack.json, b/stack.json) are two stacks.
        self.templates = tuple(
            dataclasses.replace(t, name=str(t.path)) if names.count(t.name) > 1 else t
            for t in ordered
        )
        self.resolvers = {tkey(t): Resolver(t) for t in self.templates}
        self._props: dict[tuple[tuple[str, str], str], Mapping[str, Any]] = {}
        self._user_data: dict[tuple[tuple[str, str], str], UserData | None] = {}

    def resolver(self, tpl: Template) -> Resolver:
        return self.resolvers[tkey(tpl)]

    # --------------------------------------------------------------- basics
    def resources(self, *types: str) -> Iterator[tuple[Template, Resource]]:
        for tpl in self.templates:
            for res in tpl.resources.values():
                if not types or res.type in types:
                    yield tpl, res

    def props(self, tpl: Template, res: Resource) -> Mapping[str, Any]:
        key = (tkey(tpl), res.logical_id)
        if key not in self._props:
            out = self.resolver(tpl).resolve(dict(res.properties))
            self._props[key] = out if isinstance(out, dict) else {}
        return self._props[key]

    def location(self, tpl: Template, res: Resource | None, pointer: str | None = None) -> Location:
        if res is None:
            return Location(str(tpl.path), pointer=pointer)
        return Location(str(tpl.path), res.logical_id, res.line, res.cdk_path, pointer)

    def at(self, fact: Fact, pointer: str | None = None) -> Location:
        """Where a finding about `fact` (a host, key, role, ...) points, `pointer` inside it."""
        return self.location(fact.template, fact.resource, pointer)

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
        attached: dict[tuple[tuple[str, str], str], list[PolicyDoc]] = {}
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
            roles = _seq(p.get("Roles"))
            if res.type == "AWS::IAM::RolePolicy":
                roles = [p.get("RoleName")]
            for r in roles:
                if isinstance(r, str):
                    attached.setdefault((tkey(tpl), r), []).append(doc)
            if res.type == "AWS::IAM::ManagedPolicy":
                managed_by_arn[str(self.resolver(tpl).ref(res.logical_id))] = doc
        for tpl, res in self.resources("AWS::IAM::Role"):
            p = self.props(tpl, res)
            resolver = self.resolver(tpl)
            name = str(resolver.ref(res.logical_id))
            docs: list[PolicyDoc] = []
            for i, pol in enumerate(_seq(p.get("Policies"))):
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
            for arn in _seq(p.get("ManagedPolicyArns")):
                if isinstance(arn, str) and arn in managed_by_arn:
                    docs.append(managed_by_arn[arn])
            docs.extend(attached.get((tkey(tpl), name), []))
            path = p.get("Path") if isinstance(p.get("Path"), str) else "/"
            named = isinstance(p.get("RoleName"), str) and "{{" not in p["RoleName"]
            out.append(
                RoleFact(
                    tpl, res, resolver.role_arn(res.logical_id), name, path, tuple(docs), named
                )
            )
        return tuple(out)

    def role_by_arn(self, arn: str, tpl: Template | None = None) -> RoleFact | None:
        """The role `arn` names: in `tpl` first; elsewhere only a role with a RoleName (an
        unnamed role gets a per-stack generated name, so it can never be another stack's)."""
        if tpl is not None:
            same = next((r for r in self.roles if r.template is tpl and r.arn == arn), None)
            if same:
                return same
        return next((r for r in self.roles if r.arn == arn), None)

    def role_by_id(self, tpl: Template, logical_id: str) -> RoleFact | None:
        return next(
            (r for r in self.roles if r.template is tpl and r.resource.logical_id == logical_id),
            None,
        )

    def role_by_name(self, tpl: Template, name: str) -> RoleFact | None:
        same = next((r for r in self.roles if r.template is tpl and r.name == name), None)
        return same or next((r for r in self.roles if r.named and r.name == name), None)

    # --------------------------------------------------------------- keys
    @cached_property
    def keys(self) -> tuple[KeyFact, ...]:
        overrides = {kid: (src, raw) for kid, src, raw in self.key_policies}
        used: set[str] = set()  # logical ids found in a template (every template's key)
        out: list[KeyFact] = []
        for tpl, res in self.resources("AWS::KMS::Key"):
            p = self.props(tpl, res)
            raw = p.get("KeyPolicy")
            pointer = "/Properties/KeyPolicy"
            where = f"key policy of {res.logical_id}"
            if res.logical_id in overrides:  # the policy put on the key after deployment
                src, raw = overrides[res.logical_id]
                used.add(res.logical_id)
                where = f"key policy of {res.logical_id} (from {src})"
            explicit = raw is not None
            doc = self._parse(tpl, res, raw if explicit else _DEFAULT_KEY_POLICY, pointer, where)
            arn = self.resolver(tpl).key_arn(res.logical_id)
            out.append(KeyFact(tpl, res, arn, doc, explicit))
        for kid, (src, raw) in sorted(overrides.items()):
            if kid in used:
                continue
            tpl = Template(Path(src), kid, {}, {})
            res = Resource(kid, "AWS::KMS::Key", {}, {}, 1)
            doc = self._parse(tpl, res, raw, "", f"key policy of {kid} (from {src})")
            key_id = kid.rsplit("/", 1)[-1]
            arn = f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{key_id}"
            out.append(KeyFact(tpl, res, arn, doc, True, external=True))
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
            if (want_id and want_id == self.resolver(t).ref(res.logical_id)) or (
                want_name and want_name == p.get("LaunchTemplateName")
            ):
                return res, _obj(p.get("LaunchTemplateData"))
        return None

    def _role_of_profile(self, tpl: Template, profile: Any) -> RoleFact | None:
        if not isinstance(profile, str):
            return None
        resolver = self.resolver(tpl)
        for t, res in self.resources("AWS::IAM::InstanceProfile"):
            if t is not tpl:
                continue
            if profile in (
                str(resolver.ref(res.logical_id)),
                str(resolver.get_att(res.logical_id, "Arn")),
            ):
                for r in _seq(self.props(t, res).get("Roles")):
                    role = self.role_by_name(tpl, str(r))
                    if role:
                        return role
        return None

    @cached_property
    def hosts(self) -> tuple[HostFact, ...]:
        """Enclave hosts as AWS sees them: any instance or launch template with
        EnclaveOptions.Enabled (or our Metadata), whoever wrote the template."""
        out: list[HostFact] = []
        referenced_lts: set[tuple[tuple[str, str], str]] = set()
        for tpl, res in self.resources("AWS::EC2::Instance"):
            p = self.props(tpl, res)
            lt = self._launch_template(tpl, p.get("LaunchTemplate"))
            ltd: Mapping[str, Any] = lt[1] if lt else {}
            if lt:
                referenced_lts.add((tkey(tpl), lt[0].logical_id))
            enabled = _truthy(
                _obj(p.get("EnclaveOptions") or ltd.get("EnclaveOptions")).get("Enabled")
            )
            meta = res.metadata.get(HOST_METADATA)
            if not enabled and meta is None:
                continue
            hib = _obj(p.get("HibernationOptions") or ltd.get("HibernationOptions"))
            mopts = _obj(p.get("MetadataOptions") or ltd.get("MetadataOptions"))
            itype = p.get("InstanceType") or ltd.get("InstanceType")
            profile = p.get("IamInstanceProfile") or _profile_of(ltd.get("IamInstanceProfile"))
            role = self._host_role(tpl, meta, profile)
            user_data = p.get("UserData") or ltd.get("UserData")
            out.append(
                HostFact(
                    tpl,
                    res,
                    "instance",
                    itype if isinstance(itype, str) else None,
                    enabled,
                    _truthy(hib.get("Configured")),
                    _str_or_none(mopts.get("HttpTokens")),
                    role,
                    meta if isinstance(meta, dict) else None,
                    user_data if isinstance(user_data, str) else None,
                )
            )
        for tpl, res in self.resources("AWS::EC2::LaunchTemplate"):
            ltd = _obj(self.props(tpl, res).get("LaunchTemplateData"))
            enabled = _truthy(_obj(ltd.get("EnclaveOptions")).get("Enabled"))
            meta = res.metadata.get(HOST_METADATA)
            if meta is None and (not enabled or (tkey(tpl), res.logical_id) in referenced_lts):
                continue
            itype = ltd.get("InstanceType")
            role = self._host_role(tpl, meta, _profile_of(ltd.get("IamInstanceProfile")))
            user_data = ltd.get("UserData")
            out.append(
                HostFact(
                    tpl,
                    res,
                    "launch-template",
                    itype if isinstance(itype, str) else None,
                    enabled,
                    _truthy(_obj(ltd.get("HibernationOptions")).get("Configured")),
                    _str_or_none(_obj(ltd.get("MetadataOptions")).get("HttpTokens")),
                    role,
                    meta if isinstance(meta, dict) else None,
                    user_data if isinstance(user_data, str) else None,
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
        """Every key the host's role can use: named in its Metadata, named as principal in a
        key policy Allow, or usable without attestation through the key policy or an identity
        policy (wildcard key ARNs included) — whether or not the key has PCR conditions."""
        ids: list[str] = []
        if host.metadata:
            ids.extend(k for k in _seq(host.metadata.get("attested_keys")) if isinstance(k, str))
            for s in _seq(host.metadata.get("secrets")):
                if isinstance(s, dict) and isinstance(s.get("key"), str):
                    ids.append(s["key"])
        keys = {
            id(k): k
            for k in (self.key_by_id(host.template, i) for i in dict.fromkeys(ids))
            if k is not None
        }
        if host.role is not None:
            for k in self.keys:
                if id(k) not in keys and self.role_can_use(host.role, k):
                    keys[id(k)] = k
        return list(keys.values())

    def user_data(self, host: HostFact) -> UserData | None:
        """What the host's user data does (None when it has none)."""
        key = (tkey(host.template), host.resource.logical_id)
        if key not in self._user_data:
            text = host.user_data
            where = f"{host.template.path}: user data of {host.resource.logical_id}"
            self._user_data[key] = parse_user_data(text, where) if text else None
        return self._user_data[key]

    def role_can_use(self, role: RoleFact, key: KeyFact) -> bool:
        """The key policy names the role in an Allow, or KMS would let the role call an
        attested action on the key without any attestation."""
        if key.doc is None:
            return False
        if any(
            s.effect == "Allow" and p.value == role.arn
            for s in key.doc.policy.statements
            for p in (s.principals or ())
        ):
            return True
        identity = [d.policy for d in role.policies]
        return any(
            evaluate_kms(self.unattested(role.arn, a, key.arn), key.doc.policy, identity).allowed
            for a in ATTESTED_ACTIONS
        )

    # --------------------------------------------------------------- ACM associations
    @cached_property
    def associations(self) -> tuple[AssociationFact, ...]:
        out: list[AssociationFact] = []
        for tpl, res in self.resources("AWS::EC2::EnclaveCertificateIamRoleAssociation"):
            p = self.props(tpl, res)
            role_arn = p.get("RoleArn")
            role_arn = role_arn if isinstance(role_arn, str) else ""
            role = self.role_by_arn(role_arn, tpl)
            lid = res.logical_id
            out.append(
                AssociationFact(
                    tpl,
                    res,
                    role,
                    role_arn,
                    self.resolver(tpl).assoc_attr(lid, "CertificateS3BucketName"),
                    self.resolver(tpl).assoc_attr(lid, "CertificateS3ObjectKey"),
                    self.resolver(tpl).assoc_attr(lid, "EncryptionKmsKeyId"),
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


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _profile_of(spec: Any) -> Any:
    if isinstance(spec, dict):
        return spec.get("Arn") or spec.get("Name")
    return None
