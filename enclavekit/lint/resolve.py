"""Resolve CloudFormation intrinsics far enough to judge policies statically.

Names that only exist after deployment (role ARNs, key ids, the ACM association's bucket)
become stable symbolic values derived from the logical id, so that a key policy naming
`Fn::GetAtt [HostRole, Arn]` and the role itself meet on the same string. Anything that cannot
be known (an import, a parameter without default) becomes a `{{...}}` token, never a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from enclavekit.errors import TemplateError
from enclavekit.lint.templates import Template

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"

_NOVALUE = object()
# Intrinsics nest (and re-enter through Ref/GetAtt of other resources) at most this deep; deeper
# (or cyclic) references resolve to a token instead of recursing without end.
MAX_NESTING = 64
# Text that Fn::Join / Fn::Sub / Fn::ToJsonString may produce in one template: a template of
# bounded size cannot amplify itself into gigabytes through repeated references.
MAX_PRODUCED_CHARS = 32 * 1024 * 1024


def generated_name(stack: str, logical_id: str) -> str:
    """The name CloudFormation generates for an unnamed resource: stack name and logical id
    (AWS adds a random suffix), so two stacks' resources never share a symbolic name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", f"{stack}-{logical_id}")


class Resolver:
    """Resolves intrinsics inside one template (parameters take their defaults)."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self._params = template.body.get("Parameters") or {}
        self._mappings = template.body.get("Mappings") or {}
        self._conditions = template.body.get("Conditions") or {}
        self._cond_cache: dict[str, bool] = {}
        self._level = 0  # current nesting of _resolve/_truth, across re-entrant calls
        self._produced = 0

    # --------------------------------------------------------------- public
    def key_id(self, logical_id: str) -> str:
        """The symbolic key id of this template's KMS key `logical_id`."""
        return f"key-{generated_name(self.template.name, logical_id)}"

    def key_arn(self, logical_id: str) -> str:
        return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{self.key_id(logical_id)}"

    def assoc_attr(self, logical_id: str, attr: str) -> str:
        """Symbolic value of an ACM association attribute (bucket, object key, KMS key id)."""
        return f"ek-{generated_name(self.template.name, logical_id)}-{attr}".lower()

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic replaced by what it evaluates to (or a token)."""
        out = self._resolve(value, 0)
        return None if out is _NOVALUE else out

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.template.name,
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/"
            f"{self.template.name}/id",
            "AWS::NotificationARNs": [],
            "AWS::NoValue": _NOVALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self._params:
            param = self._params[name]
            if isinstance(param, dict) and "Default" in param:
                default = param["Default"]
                ptype = str(param.get("Type", ""))
                if ptype.startswith("List<") or ptype == "CommaDelimitedList":
                    return [s.strip() for s in str(default).split(",")]
                return default if not ptype.startswith("AWS::SSM") else f"{{{{param:{name}}}}}"
            return f"{{{{param:{name}}}}}"
        res = self.template.resources.get(name)
        if res is None:
            return f"{{{{ref:{name}}}}}"
        return self._ref_resource(name, res.type, res.properties)

    def get_att(self, logical_id: str, attr: str) -> Any:
        res = self.template.resources.get(logical_id)
        if res is None:
            return f"{{{{getatt:{logical_id}.{attr}}}}}"
        rtype, props = res.type, res.properties
        if rtype == "AWS::IAM::Role":
            if attr == "Arn":
                return self.role_arn(logical_id, props)
            if attr == "RoleId":
                return f"AROA{logical_id.upper()}"
        if rtype == "AWS::IAM::InstanceProfile" and attr == "Arn":
            path = self._str(props.get("Path")) or "/"
            return f"arn:{PARTITION}:iam::{ACCOUNT}:instance-profile{path}{self.ref(logical_id)}"
        if rtype == "AWS::KMS::Key":
            if attr == "Arn":
                return self.key_arn(logical_id)
            if attr == "KeyId":
                return self.key_id(logical_id)
        if rtype == "AWS::EC2::EnclaveCertificateIamRoleAssociation":
            return self.assoc_attr(logical_id, attr)
        if rtype == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:{PARTITION}:s3:::{self.ref(logical_id)}"
        if rtype == "AWS::EC2::LaunchTemplate":
            if attr == "LaunchTemplateId":
                return f"lt-{generated_name(self.template.name, logical_id)}"
            if attr in ("LatestVersionNumber", "DefaultVersionNumber"):
                return "1"
        if rtype == "AWS::IAM::ManagedPolicy" and attr == "PolicyArn":
            return self.ref(logical_id)
        return f"{{{{getatt:{logical_id}.{attr}}}}}"

    def role_arn(self, logical_id: str, props: Mapping[str, Any] | None = None) -> str:
        """The ARN a role gets: path and RoleName as written, else its logical id."""
        if props is None:
            props = self.template.resources[logical_id].properties
        path = self._str(props.get("Path")) or "/"
        name = self._ref_resource(logical_id, "AWS::IAM::Role", props)
        return f"arn:{PARTITION}:iam::{ACCOUNT}:role{path}{name}"

    # --------------------------------------------------------------- internals
    def _str(self, value: Any) -> str | None:
        out = self.resolve(value)
        return out if isinstance(out, str) else None

    def _ref_resource(self, logical_id: str, rtype: str, props: Mapping[str, Any]) -> Any:
        named = {
            "AWS::IAM::Role": "RoleName",
            "AWS::IAM::InstanceProfile": "InstanceProfileName",
            "AWS::S3::Bucket": "BucketName",
            "AWS::KMS::Alias": "AliasName",
        }
        if rtype in named and props.get(named[rtype]) is not None:
            name = self._str(props.get(named[rtype]))
            if name:
                return name
        if rtype == "AWS::KMS::Key":
            return self.key_id(logical_id)
        if rtype == "AWS::IAM::ManagedPolicy":
            name = self._str(props.get("ManagedPolicyName")) or logical_id
            path = self._str(props.get("Path")) or "/"
            return f"arn:{PARTITION}:iam::{ACCOUNT}:policy{path}{name}"
        if rtype == "AWS::EC2::LaunchTemplate":
            return f"lt-{generated_name(self.template.name, logical_id)}"
        if rtype == "AWS::CertificateManager::Certificate":
            return f"arn:{PARTITION}:acm:{REGION}:{ACCOUNT}:certificate/{logical_id}"
        if rtype == "AWS::S3::Bucket":
            return generated_name(self.template.name, logical_id).lower()
        if rtype in ("AWS::IAM::Role", "AWS::IAM::InstanceProfile"):
            return generated_name(self.template.name, logical_id)
        return logical_id

    def condition(self, name: str) -> bool:
        """A template condition's value; undecidable ones count as true (judge the worst)."""
        if name not in self._cond_cache:
            self._cond_cache[name] = True  # cycle guard
            body = self._conditions.get(name)
            self._cond_cache[name] = self._truth(body, 0) if body is not None else True
        return self._cond_cache[name]

    def _truth(self, expr: Any, depth: int) -> bool:
        if self._level > MAX_NESTING:
            return True
        self._level += 1
        try:
            return self._truth_of(expr, depth)
        finally:
            self._level -= 1

    def _truth_of(self, expr: Any, depth: int) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            ((fn, arg),) = expr.items()
            if fn == "Condition" and isinstance(arg, str):
                return self.condition(arg)
            if fn == "Fn::Not" and isinstance(arg, list) and arg:
                return not self._truth(arg[0], depth + 1)
            if fn == "Fn::And" and isinstance(arg, list):
                return all(self._truth(a, depth + 1) for a in arg)
            if fn == "Fn::Or" and isinstance(arg, list):
                return any(self._truth(a, depth + 1) for a in arg)
            if fn == "Fn::Equals" and isinstance(arg, list) and len(arg) == 2:
                a, b = (self._resolve(x, depth + 1) for x in arg)
                if any(isinstance(x, str) and "{{" in x for x in (a, b)):
                    return True
                return str(a) == str(b)
        if isinstance(expr, bool):
            return expr
        return True

    def _produce(self, text: str) -> str:
        """Account for generated text; TemplateError past MAX_PRODUCED_CHARS."""
        self._produced += len(text)
        if self._produced > MAX_PRODUCED_CHARS:
            raise TemplateError(
                f"{self.template.path}: expected intrinsic functions that produce at most "
                f"{MAX_PRODUCED_CHARS} characters, found more (Fn::Join/Fn::Sub amplification)"
            )
        return text

    def _resolve(self, value: Any, depth: int) -> Any:
        if depth > MAX_NESTING or self._level > MAX_NESTING:
            return "{{too-deep}}"
        self._level += 1
        try:
            return self._resolve_one(value, depth)
        finally:
            self._level -= 1

    def _resolve_one(self, value: Any, depth: int) -> Any:  # noqa: C901 - one dispatch table
        if isinstance(value, list):
            items = [self._resolve(v, depth + 1) for v in value]
            return [v for v in items if v is not _NOVALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref" and isinstance(arg, str):
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                if isinstance(arg, str):
                    arg = arg.split(".", 1)
                if isinstance(arg, list) and len(arg) == 2:
                    attr = self._resolve(arg[1], depth + 1)
                    return self.get_att(str(arg[0]), str(attr))
            if fn == "Fn::Join" and isinstance(arg, list) and len(arg) == 2:
                sep, parts = self._resolve(arg[0], depth + 1), self._resolve(arg[1], depth + 1)
                if isinstance(parts, list):
                    return self._produce(_text(sep).join(_text(p) for p in parts))
            if fn == "Fn::Sub":
                out = self._sub(arg, depth)
                return self._produce(out) if isinstance(out, str) else out
            if fn == "Fn::Select" and isinstance(arg, list) and len(arg) == 2:
                idx, seq = self._resolve(arg[0], depth + 1), self._resolve(arg[1], depth + 1)
                try:
                    return seq[int(idx)]
                except (ValueError, TypeError, IndexError, KeyError):
                    return f"{{{{select:{idx}}}}}"
            if fn == "Fn::Split" and isinstance(arg, list) and len(arg) == 2:
                sep, text = self._resolve(arg[0], depth + 1), self._resolve(arg[1], depth + 1)
                if isinstance(sep, str) and isinstance(text, str) and sep:
                    return text.split(sep)
            if fn == "Fn::If" and isinstance(arg, list) and len(arg) == 3:
                branch = arg[1] if self.condition(str(arg[0])) else arg[2]
                return self._resolve(branch, depth + 1)
            if fn == "Fn::FindInMap" and isinstance(arg, list) and len(arg) >= 3:
                m, k1, k2 = (self._resolve(a, depth + 1) for a in arg[:3])
                try:
                    return self._resolve(self._mappings[m][k1][k2], depth + 1)
                except (KeyError, TypeError):
                    return f"{{{{map:{m}.{k1}.{k2}}}}}"
            if fn == "Fn::GetAZs":
                return [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
            if fn == "Fn::Base64":
                return self._resolve(arg, depth + 1)
            if fn == "Fn::ImportValue":
                return f"{{{{import:{_text(self._resolve(arg, depth + 1))}}}}}"
            if fn == "Fn::ToJsonString":
                value = self._resolve(arg, depth + 1)
                return self._produce(json.dumps(value, separators=(",", ":"), default=str))
            if fn == "Fn::Length":
                seq = self._resolve(arg, depth + 1)
                return len(seq) if isinstance(seq, list) else "{{length}}"
            if fn == "Fn::Cidr":
                return "{{cidr}}"
        out = {}
        for k, v in value.items():
            r = self._resolve(v, depth + 1)
            if r is not _NOVALUE:
                out[k] = r
        return out

    def _sub(self, arg: Any, depth: int) -> Any:
        if isinstance(arg, str):
            text, names = arg, {}
        elif isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str):
            text, names = arg[0], arg[1] if isinstance(arg[1], dict) else {}
        else:
            return "{{sub}}"
        out: list[str] = []
        i = 0
        while i < len(text):
            start = text.find("${", i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            end = text.find("}", start)
            if end < 0:
                out.append(text[start:])
                break
            name = text[start + 2 : end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in names:
                out.append(_text(self._resolve(names[name], depth + 1)))
            elif "." in name and not name.startswith("AWS::"):
                lid, attr = name.split(".", 1)
                out.append(_text(self.get_att(lid, attr)))
            else:
                out.append(_text(self.ref(name)))
            i = end + 1
        return "".join(out)


def _text(value: Any) -> str:
    if value is _NOVALUE:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)
