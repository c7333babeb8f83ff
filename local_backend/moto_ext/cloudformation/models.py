"""CloudFormation as the cdk CLI drives it, on top of moto's template engine.

What this changes in moto 5.2.5 (each found by running the real cdk CLI against it, see
docs/reference/toolchain-findings.md §4-§5):
- A resource type we cannot emulate FAILS the change set / stack with its name. moto skips it
  with a log warning. `AWS::CDK::Metadata` is an explicit no-op model; moto's WaitCondition
  "null models" are refused too. `Custom::*` / `AWS::CloudFormation::CustomResource` run
  their Lambda handlers locally (custom_resource.py); cross-stack exports: exports.py.
- Updates: a type without an update handler used to vanish from the stack (the KMS key of an
  update deploy); now it is replaced (create new, delete old) unless its service extension
  registers an in-place handler (`register_updater`; `AWS::KMS::Key`: kms/cfn_key.py).
- ExecuteChangeSet: errors no longer escape as HTTP 500; a failed create rolls back (every
  created resource deleted, ROLLBACK_COMPLETE), a failed update rolls back to the previous
  template (UPDATE_ROLLBACK_COMPLETE, so the next deploy proceeds as on AWS); both with a
  resource event naming the failing resource and the reason. Deletion runs dependents first
  (ordering.py). Outputs and exports are
  rebuilt after every execution. Change sets are looked up per stack (cdk names every one
  `cdk-deploy-change-set`); unknown ones answer ChangeSetNotFound.
- SSM-typed parameters that cannot be resolved answer AWS's "Unable to fetch parameters"
  ValidationError instead of an AttributeError.
- S3 TemplateURLs on 127.0.0.1 / [::1] are read path-style like `localhost` ones.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing, utils
from moto.cloudformation import responses as cfn_responses
from moto.cloudformation.exceptions import CloudFormationError, ValidationError
from moto.cloudformation.models import ChangeSet, CloudFormationBackend, Event, Stack
from moto.cloudformation.parsing import OutputMap
from moto.core.common_models import CloudFormationModel
from moto.ec2.models.core import TaggedEC2Resource

from ..cfn_resource import CfnCall, CfnResource
from . import exports, inplace, ordering
from .custom_resource import CustomResource, is_custom_type

log = logging.getLogger("enclavekit.endpoint.cloudformation")

NOOP_TYPES = frozenset({"AWS::CDK::Metadata"})
# Serialises stack operations: moto's models are not thread-safe and the server is threaded.
STACK_LOCK = threading.RLock()

# Callbacks run after a change set / stack operation completes, inside the stack lock, with
# (stack, operation) where operation is "CREATE" | "UPDATE". An exception fails the operation
# (and a create rolls back). The EC2 extension uses this to boot enclave instances.
_after_apply: list[Callable[[Stack, str], None]] = []
# Per-type in-place update handlers: (original, new_name, json, account, region) -> resource.
_updaters: dict[str, Callable[..., Any]] = {}


def after_apply(fn: Callable[[Stack, str], None]) -> None:
    """Register `fn(stack, operation)` to run when a stack create/update has applied."""
    if fn not in _after_apply:
        _after_apply.append(fn)


def register_updater(resource_type: str, fn: Callable[..., Any]) -> None:
    """Use `fn` for in-place updates of `resource_type` (instead of moto's or replacement)."""
    _updaters[resource_type] = fn


class ChangeSetNotFound(CloudFormationError):
    code = "ChangeSetNotFoundException"

    def __init__(self, name: str):
        super().__init__(f"ChangeSet [{name}] does not exist")


class InvalidChangeSetStatus(CloudFormationError):
    code = "InvalidChangeSetStatusException"


class UnsupportedResourceType(ValidationError):
    """A template resource type the local endpoint cannot emulate."""

    def __init__(self, types: Iterable[str]):
        names = ", ".join(sorted(set(types)))
        super().__init__(
            message=(
                f"Template format error: resource type(s) not supported by the enclavekit local "
                f"endpoint: [{names}]"
            )
        )


@dataclass(eq=False)
class CdkMetadata(CfnResource, CloudFormationModel):
    """`AWS::CDK::Metadata`: analytics metadata the CLI emits; deliberately a no-op."""

    CFN_TYPE = "AWS::CDK::Metadata"
    CFN_REF = "name"

    name: str

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CdkMetadata:
        return cls(call.name)

    @classmethod
    def cfn_update(cls, old: CdkMetadata, call: CfnCall) -> CdkMetadata:
        return old

    def delete(self, account_id: str, region_name: str) -> None:
        return None


def _model_map() -> dict[str, type[CloudFormationModel]]:
    # moto builds its map from CloudFormationModel.__subclasses__() once (lru_cache); ours are
    # defined after the first call in some import orders, so refresh it when asked.
    parsing.get_model_list.cache_clear()
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    return parsing.get_model_map()


def supported_types() -> frozenset[str]:
    """Every resource type the local endpoint deploys."""
    return frozenset(_model_map())


def unsupported_types(template: dict[str, Any]) -> list[str]:
    """The resource types of `template` that the endpoint cannot deploy."""
    resources = template.get("Resources") or {}
    known = supported_types()
    return sorted(
        {
            r.get("Type", "<no Type>")
            for r in resources.values()
            if not isinstance(r, dict)
            or (r.get("Type") not in known and not is_custom_type(str(r.get("Type"))))
        }
    )


def check_template(template: dict[str, Any]) -> None:
    """Refuse a template with a resource type we cannot emulate (no silent skip)."""
    bad = unsupported_types(template)
    if bad:
        raise UnsupportedResourceType(bad)


def _resource_class_from_type(resource_type: str) -> type[CloudFormationModel]:
    if is_custom_type(resource_type):
        return CustomResource
    model = parsing.get_model_map().get(resource_type) or _model_map().get(resource_type)
    if model is None:
        raise UnsupportedResourceType([resource_type])
    return model


_original_create = parsing.parse_and_create_resource


def _parse_and_create_resource(
    logical_id: str,
    resource_json: dict[str, Any],
    resources_map: Any,
    account_id: str,
    region_name: str,
) -> Any:
    raw_json = copy.deepcopy(resource_json)
    try:
        _create_dependencies(resource_json, resources_map)
        resource = _original_create(
            logical_id, resource_json, resources_map, account_id, region_name
        )
    except Exception as exc:
        tag_failure(exc, logical_id, resource_json.get("Type", ""))
        raise
    if resource is not None and isinstance(resource, TaggedEC2Resource):
        _tag_ec2(resource, resources_map, logical_id, account_id, region_name)
    if resource is not None:
        inplace.remember(resource, raw_json)
    return resource


def _create_dependencies(resource_json: dict[str, Any], resources_map: Any) -> None:
    """CloudFormation creates what a resource `DependsOn` before it. moto's change-set path
    creates added resources in set order, so a custom resource could run before the IAM
    policy it depends on (and be denied, now that its Lambda acts as its role)."""
    depends = resource_json.get("DependsOn") or []
    for name in [depends] if isinstance(depends, str) else depends:
        if isinstance(name, str) and name in resources_map._resource_json_map:
            _ = resources_map[name]  # moto's map creates a resource on first access


def _tag_ec2(
    resource: Any, resources_map: Any, logical_id: str, account_id: str, region_name: str
) -> None:
    from moto.ec2.models import ec2_backends

    tags = {
        "aws:cloudformation:stack-name": resources_map["AWS::StackName"],
        "aws:cloudformation:stack-id": resources_map["AWS::StackId"],
        "aws:cloudformation:logical-id": logical_id,
    }
    ec2_backends[account_id][region_name].create_tags([resource.physical_resource_id], tags)


def tag_failure(exc: BaseException, logical_id: str, resource_type: str) -> None:
    """Name the resource `exc` failed at, for the stack's failure event and status reason (a
    hook that fails after the stack applied names its resource too). The innermost resource
    that failed is the one to report (creation is lazy and nested), so a tag is kept."""
    if not hasattr(exc, "_ek_logical_id"):
        exc._ek_logical_id = logical_id  # type: ignore[attr-defined]
        exc._ek_type = resource_type  # type: ignore[attr-defined]


def _parse_and_update_resource(
    logical_id: str,
    resource_json: dict[str, Any],
    resources_map: Any,
    account_id: str,
    region_name: str,
) -> Any:
    resource_type = resource_json["Type"]
    raw_json = copy.deepcopy(resource_json)
    try:
        parsed = parsing.parse_resource_and_generate_name(logical_id, resource_json, resources_map)
        resource_class, resource_json, new_name = parsed
        original = resources_map[logical_id]
        updater = _updaters.get(resource_type)
        own = resource_class.update_from_cloudformation_json
        if original is not None and inplace.tags_only_change(original, raw_json):
            new = inplace.retag(original, raw_json, resources_map, account_id, region_name)
        elif updater is not None:
            new = updater(original, new_name, resource_json, account_id, region_name)
        elif not hasattr(own, "__isabstractmethod__"):
            new = own(
                original_resource=original,
                new_resource_name=new_name,
                cloudformation_json=resource_json,
                account_id=account_id,
                region_name=region_name,
            )
        else:
            # No update handler: replace, as CloudFormation does for replacement updates.
            new = resource_class.create_from_cloudformation_json(
                new_name,
                resource_json,
                account_id,
                region_name,
                LogicalId=logical_id,
                StackId=resources_map.stack_id,
                ResourceType=resource_type,
            )
            if original is not None and original is not new:
                resources_map._delete_resource(original, resource_json)
    except Exception as exc:
        tag_failure(exc, logical_id, resource_type)
        raise
    if new is None:
        raise ValidationError(
            message=f"update of {logical_id} ({resource_type}) produced no resource"
        )
    new.cf_resource_type = resource_type
    new.logical_resource_id = logical_id
    inplace.remember(new, raw_json)
    if isinstance(new, TaggedEC2Resource) and new is not original:
        _tag_ec2(new, resources_map, logical_id, account_id, region_name)
    return new


def _parse_ssm_parameter(self: parsing.ResourceMap, value: str, value_type: str) -> str:
    from moto.ssm import ssm_backends

    parameter = ssm_backends[self._account_id][self._region_name].get_parameter(value)
    if parameter is None:
        raise ValidationError(
            message=(f"Unable to fetch parameters [{value}] from parameter store for this account.")
        )
    actual = parameter.value
    if value_type.startswith("List<") or value_type.startswith("AWS::SSM::Parameter::Value<List"):
        return actual.split(",")  # type: ignore[return-value]
    return actual


def _get_stack_from_s3_url(template_url: str, account_id: str, partition: str) -> str:
    host = urlparse(template_url).hostname or ""
    if host in ("127.0.0.1", "::1") or host.startswith("127."):
        template_url = template_url.replace(urlparse(template_url).netloc, "localhost", 1)
    return _original_get_stack_from_s3_url(template_url, account_id=account_id, partition=partition)


_original_get_stack_from_s3_url = utils.get_stack_from_s3_url


# ------------------------------------------------------------------ change sets and stacks


def _add_resource_event(
    stack: Stack,
    logical_id: str,
    resource_type: str,
    status: str,
    reason: str | None,
    physical_id: str = "",
) -> None:
    stack.events.append(
        Event(
            stack_id=stack.stack_id,
            stack_name=stack.name,
            logical_resource_id=logical_id,
            physical_resource_id=physical_id,
            resource_type=resource_type,
            resource_status=status,
            resource_status_reason=reason,
            resource_properties=None,
        )
    )


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:1000]


def _find_change_set(
    backend: CloudFormationBackend, name: str, stack_name: str | None
) -> ChangeSet:
    if name in backend.change_sets:
        return backend.change_sets[name]
    matches = [
        cs
        for cs in backend.change_sets.values()
        if cs.change_set_name == name
        and (not stack_name or stack_name in (cs.stack_name, cs.stack_id))
    ]
    if not matches:
        raise ChangeSetNotFound(name)
    return matches[-1]


def describe_change_set(
    self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
) -> ChangeSet:
    return _find_change_set(self, change_set_name, stack_name)


def delete_change_set(
    self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
) -> None:
    try:
        cs = _find_change_set(self, change_set_name, stack_name)
    except ChangeSetNotFound:
        # AWS: deleting an absent change set by name on an existing stack succeeds; the cdk
        # CLI relies on it (a skipped no-change deploy deletes it, the next update again).
        if stack_name and any(stack_name in (s.name, s.stack_id) for s in self.stacks.values()):
            return
        raise
    del self.change_sets[cs.change_set_id]


def _refresh_stack(stack: Stack, template: str, parameters: dict[str, Any] | None) -> None:
    stack.template = template
    stack._parse_template()
    stack.description = stack.template_dict.get("Description")
    if parameters:
        stack.parameters = parameters
    stack.output_map = stack._create_output_map()
    _ = stack.outputs  # resolve now, so a bad output fails the operation, not DescribeStacks


def _forget_resources(stack: Stack) -> None:
    """Empty a stack's resource map once its resources are gone. moto's map is lazy: any later
    read (DescribeStackResources, which the CLI calls after a failure) would otherwise create
    every resource of the template again."""
    stack.resource_map._resource_json_map = {}


def _rollback_create(stack: Stack) -> str | None:
    """Delete whatever a failed create made; None on success, else the reason it could not."""
    try:
        stack.resource_map.delete()
        _forget_resources(stack)
        return None
    except Exception as exc:  # noqa: BLE001 - reported in the stack status, not a 500
        log.exception("rollback of %s failed", stack.name)
        return _reason(exc)


def _rollback_update(stack: Stack, previous: tuple[str, dict[str, Any] | None]) -> str | None:
    """Return the stack's resources to the previous template, as CloudFormation's update
    rollback does; None on success, else the reason it could not."""
    template, parameters = previous
    rmap = stack.resource_map
    # What the failed update never created must not be created by a later lazy read either.
    rmap._resource_json_map = {
        k: v for k, v in rmap._resource_json_map.items() if k in rmap._parsed_resources
    }
    try:
        rmap.update(stack.parse_template(template), parameters)
        _refresh_stack(stack, template, parameters)
        return None
    except Exception as exc:  # noqa: BLE001 - reported in the stack status, not a 500
        log.exception("update rollback of %s failed", stack.name)
        return _reason(exc)


def _fail(
    stack: Stack,
    operation: str,
    exc: BaseException,
    previous: tuple[str, dict[str, Any] | None] | None = None,
) -> None:
    reason = _reason(exc)
    logical = getattr(exc, "_ek_logical_id", None)
    rtype = getattr(exc, "_ek_type", "")
    log.warning("%s of stack %s failed at %s: %s", operation, stack.name, logical, reason)
    if logical:
        _add_resource_event(stack, logical, rtype, f"{operation}_FAILED", reason)
    else:
        stack._add_stack_event(f"{operation}_FAILED", resource_status_reason=reason)
    if operation == "CREATE":
        stack._add_stack_event(
            "ROLLBACK_IN_PROGRESS",
            resource_status_reason=(
                f"The following resource(s) failed to create: [{logical or stack.name}]. "
                "Rollback requested by user."
            ),
        )
        leftover = _rollback_create(stack)
        if leftover is None:
            stack.status = "ROLLBACK_COMPLETE"
            stack._add_stack_event("ROLLBACK_COMPLETE")
        else:
            stack.status = "ROLLBACK_FAILED"
            stack._add_stack_event("ROLLBACK_FAILED", resource_status_reason=leftover)
    elif previous is None:
        stack.status = "UPDATE_FAILED"
        stack._add_stack_event("UPDATE_FAILED", resource_status_reason=reason)
    else:
        stack._add_stack_event(
            "UPDATE_ROLLBACK_IN_PROGRESS",
            resource_status_reason=(
                f"The following resource(s) failed to update: [{logical or stack.name}]. "
            ),
        )
        leftover = _rollback_update(stack, previous)
        if leftover is None:
            stack.status = "UPDATE_ROLLBACK_COMPLETE"
            stack.status_reason = reason
            stack._add_stack_event("UPDATE_ROLLBACK_COMPLETE")
        else:
            stack.status = "UPDATE_ROLLBACK_FAILED"
            stack.status_reason = leftover
            stack._add_stack_event("UPDATE_ROLLBACK_FAILED", resource_status_reason=leftover)


def _run_after_apply(stack: Stack, operation: str) -> None:
    for fn in list(_after_apply):
        fn(stack, operation)


def execute_change_set(
    self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None
) -> None:
    cs = _find_change_set(self, change_set_name, stack_name)
    if cs.execution_status != "AVAILABLE":
        raise InvalidChangeSetStatus(
            f"ChangeSet [{cs.change_set_id}] cannot be executed in its current execution "
            f"status of [{cs.execution_status}]"
        )
    stack = self.stacks.get(cs.stack_id)
    if stack is None:
        raise ValidationError(cs.stack_name)
    operation = cs.change_set_type
    previous = (stack.template, dict(stack.parameters or {})) if operation == "UPDATE" else None
    with STACK_LOCK:
        cs.execution_status = "EXECUTE_IN_PROGRESS"
        stack.status = f"{operation}_IN_PROGRESS"
        stack._add_stack_event(f"{operation}_IN_PROGRESS", resource_status_reason="User Initiated")
        try:
            check_template(cs.template_dict)
            exports.attach(self, stack)
            exports.check_removed_exports(self, stack, cs.template_dict)
            cs.apply()
            _refresh_stack(stack, cs.template, cs.parameters)
            exports.check_unique(self, stack)
            _run_after_apply(stack, operation)
        except Exception as exc:  # noqa: BLE001 - becomes the stack's failure, as on AWS
            log.debug("change set failure", exc_info=True)
            cs.execution_status = "EXECUTE_FAILED"
            _fail(stack, operation, exc, previous)
            return
        exports.publish(self, stack)
        stack.status_reason = None
        cs.execution_status = "EXECUTE_COMPLETE"
        stack.status = f"{operation}_COMPLETE"
        stack._add_stack_event(f"{operation}_COMPLETE")
        # Executing a change set deletes the stack's other change sets (as on AWS).
        for cid in [
            c
            for c, other in self.change_sets.items()
            if other.stack_id == stack.stack_id and other is not cs
        ]:
            del self.change_sets[cid]


_original_create_resources = Stack.create_resources


def _create_resources(self: Stack) -> None:
    """CreateStack (not via a change set): same refusal, rollback and hooks."""
    with STACK_LOCK:
        self.status = "CREATE_IN_PROGRESS"
        backend = cfn_models.cloudformation_backends[self.account_id][self.region_name]
        try:
            check_template(self.template_dict)
            exports.attach(backend, self)
            self.resource_map.create(self.template_dict)
            self.description = self.template_dict.get("Description")
            self.output_map = self._create_output_map()
            _ = self.outputs
            _run_after_apply(self, "CREATE")
        except Exception as exc:  # noqa: BLE001
            _fail(self, "CREATE", exc)
            return
        self.mark_creation_complete()


_original_stack_update = Stack.update


def _stack_update(
    self: Stack,
    template: str,
    role_arn: str | None = None,
    parameters: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    with STACK_LOCK:
        backend = cfn_models.cloudformation_backends[self.account_id][self.region_name]
        previous = (self.template, dict(self.parameters or {}))
        try:
            new_template = self.parse_template(template)
            check_template(new_template)
            exports.attach(backend, self)
            exports.check_removed_exports(backend, self, new_template)
            _original_stack_update(self, template, role_arn, parameters, tags)
            _ = self.outputs
            exports.check_unique(backend, self)
            _run_after_apply(self, "UPDATE")
        except Exception as exc:  # noqa: BLE001
            _fail(self, "UPDATE", exc, previous)
            return
        exports.publish(backend, self)


def _freeze_deleted(stack: Stack) -> None:
    """A deleted stack keeps no resources or outputs: DescribeStacks on its id must not try to
    resolve outputs against resources that are gone (that was a KeyError, an HTTP 500)."""
    _forget_resources(stack)
    stack.output_map = OutputMap(stack.resource_map, {"Outputs": {}}, stack.stack_id)


def delete_stack(self: CloudFormationBackend, name_or_stack_id: str) -> None:
    """Delete as AWS does: refused (stack unchanged, reason on the stack) while another stack
    imports one of its exports; DELETE_FAILED + reason when a resource cannot be deleted;
    never a 500. Its exports and change sets go with it."""
    with STACK_LOCK:
        stacks = [s for s in self.stacks.values() if name_or_stack_id in (s.name, s.stack_id)]
        for stack in stacks:
            in_use = exports.in_use_error(
                self, stack, set(exports.own_export_names(self, stack)), "deleted"
            )
            if in_use:
                log.warning("delete of stack %s refused: %s", stack.name, in_use)
                stack.status_reason = in_use
                stack._add_stack_event(stack.status, resource_status_reason=in_use)
                continue
            try:
                stack.delete()
            except Exception as exc:  # noqa: BLE001
                log.warning("delete of stack %s failed: %s", stack.name, _reason(exc))
                stack.status = "DELETE_FAILED"
                stack.status_reason = _reason(exc)
                stack._add_stack_event("DELETE_FAILED", resource_status_reason=_reason(exc))
                continue
            exports.withdraw(self, stack)
            _freeze_deleted(stack)
            self.stacks.pop(stack.stack_id, None)
            self.deleted_stacks[stack.stack_id] = stack
            for cid in [c for c, cs in self.change_sets.items() if cs.stack_id == stack.stack_id]:
                del self.change_sets[cid]


def install() -> None:
    """Patch moto's CloudFormation engine (idempotent)."""
    if getattr(CloudFormationBackend, "_enclavekit_patched", False):
        return
    parsing.NULL_MODELS.clear()
    exports.install()
    ordering.install()
    parsing.resource_class_from_type = _resource_class_from_type
    parsing.parse_and_create_resource = _parse_and_create_resource
    parsing.parse_and_update_resource = _parse_and_update_resource
    parsing.ResourceMap.parse_ssm_parameter = _parse_ssm_parameter  # type: ignore[method-assign]
    utils.get_stack_from_s3_url = _get_stack_from_s3_url
    cfn_models.get_stack_from_s3_url = _get_stack_from_s3_url  # type: ignore[attr-defined]
    cfn_responses.get_stack_from_s3_url = _get_stack_from_s3_url  # type: ignore[attr-defined]
    CloudFormationBackend.describe_change_set = describe_change_set  # type: ignore[method-assign,assignment]
    CloudFormationBackend.delete_change_set = delete_change_set  # type: ignore[method-assign]
    CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]
    CloudFormationBackend.delete_stack = delete_stack  # type: ignore[method-assign]
    Stack.create_resources = _create_resources  # type: ignore[method-assign]
    Stack.update = _stack_update  # type: ignore[method-assign]
    _model_map()
    CloudFormationBackend._enclavekit_patched = True  # type: ignore[attr-defined]
