"""The CloudFormation boilerplate each of our moto resource models repeats, written once.

moto deploys a resource type through a `CloudFormationModel` subclass and finds those by
`CloudFormationModel.__subclasses__()` — direct subclasses only — so this is a mixin listed
*before* it, not a base between them. s3's `BucketPolicy` for instance is a
`@dataclass(eq=False)` of `(CfnResource, CloudFormationModel)` with `CFN_TYPE =
"AWS::S3::BucketPolicy"`, `CFN_REF = "bucket"`, its fields, `cfn_create` and `delete`.

The class says its type, the attribute Ref returns (`CFN_REF`, a dotted path), the property
that names it (none by default), its GetAtt attributes (none by default) and how to create it.
`cfn_update` defaults to replacement (create the new resource, then delete the old one), which
is what CloudFormation does for a property that requires replacement. The fields are a
dataclass's, with `eq=False` so resources compare by identity as moto expects.

moto's own models whose create we correct get the same `CfnCall` through `patch_cfn_create`
(our create instead of moto's) or `extend_cfn_create` (moto's, then ours): one place that
knows moto's calling convention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Self, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CfnCall:
    """One create or update as moto hands it over."""

    name: str  # the physical name moto chose (or the new one on update)
    props: dict[str, Any]  # the resource's Properties (intrinsics resolved)
    account_id: str
    region: str
    logical_id: str | None = None  # set on create
    stack_id: str = ""  # set on create
    resource_type: str = ""  # set on create: the template's Type (a `Custom::*` name too)


def cfn_call(
    resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
) -> CfnCall:
    """The `CfnCall` of moto's `create_from_cloudformation_json` arguments."""
    return CfnCall(
        resource_name,
        cloudformation_json.get("Properties") or {},
        account_id,
        region_name,
        kwargs.get("LogicalId"),
        kwargs.get("StackId") or "",
        cloudformation_json.get("Type") or kwargs.get("ResourceType") or "",
    )


def patch_cfn_create(model: type[T], create: Callable[[CfnCall], T]) -> None:
    """Replace the CloudFormation create of moto's `model` with `create(call)`."""

    def create_from_cloudformation_json(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return create(cfn_call(*args, **kwargs))

    model.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[attr-defined]


def extend_cfn_create(model: type[T], after: Callable[[T, CfnCall], None]) -> None:
    """Keep moto's CloudFormation create of `model`, then run `after(resource, call)` (for
    what moto's create drops). Idempotent: extending twice with the same `after` is one."""
    original = model.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
    if getattr(original, "after", None) is after:
        return

    def create_from_cloudformation_json(cls: type[T], *args: Any, **kwargs: Any) -> T:
        resource = original(cls, *args, **kwargs)
        after(resource, cfn_call(*args, **kwargs))
        return resource

    create_from_cloudformation_json.after = after  # type: ignore[attr-defined]
    model.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)  # type: ignore[attr-defined]


class CfnResource:
    """Mixin for `CloudFormationModel` subclasses (see the module docstring)."""

    CFN_TYPE: ClassVar[str]
    CFN_REF: ClassVar[str]  # the attribute (dotted path) whose value Ref returns
    CFN_NAME_PROPERTY: ClassVar[str] = ""  # the property that names the resource, if any
    CFN_ATTRIBUTES: ClassVar[frozenset[str]] = frozenset()  # what Fn::GetAtt may ask

    @property
    def physical_resource_id(self) -> str:
        return str(attrgetter(self.CFN_REF)(self))

    @classmethod
    def cloudformation_type(cls) -> str:
        return cls.CFN_TYPE

    @classmethod
    def cloudformation_name_type(cls) -> str:
        return cls.CFN_NAME_PROPERTY

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in cls.CFN_ATTRIBUTES

    @classmethod
    def cfn_create(cls, call: CfnCall) -> Self:
        raise NotImplementedError

    @classmethod
    def cfn_update(cls, old: Self, call: CfnCall) -> Self:
        """Replacement: the new resource first, then the old one goes."""
        new = cls.cfn_create(call)
        old.delete(call.account_id, call.region)  # type: ignore[attr-defined]
        return new

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Self:
        return cls.cfn_create(
            cfn_call(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        )

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls,
        original_resource: Self,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Self:
        props = cloudformation_json.get("Properties") or {}
        return cls.cfn_update(
            original_resource, CfnCall(new_resource_name, props, account_id, region_name)
        )
