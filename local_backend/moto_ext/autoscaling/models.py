"""Auto Scaling fleets of enclave hosts on moto: each instance a group launches from an
enclave-enabled launch template boots from its user data, as an `AWS::EC2::Instance` does.

What moto 5.2.5 does with a group's launch template, and what this changes:
- moto launches group instances with `{"LaunchTemplateId": id}` and no version, so the
  instance is built from the template's *default* version (EnclaveOptions, MetadataOptions,
  tags) while the group names another (CDK names `LatestVersionNumber`). Here the group's
  version is passed on, so every field of the instance comes from the version the group uses.
- moto never associates the template's `IamInstanceProfile` with the instances it launches
  (its RunInstances handler only does it for a profile given in the request). Here each group
  instance gets the template version's profile, so the parent gets that role's credentials
  and the ACM association (per role) reaches every instance of the fleet.
- moto updates a group from CloudFormation by deleting it and creating it again, which would
  replace every instance (and reboot every enclave) on any change, e.g. of MaxSize. Here an
  update keeps the group and its instances and applies the new sizes and template, as
  UpdateAutoScalingGroup does; a changed AutoScalingGroupName still replaces it.

Start and stop: a group instance runs the launch template version's user data in its own
host, as any instance does (`local_backend.host`); the template's `Metadata["enclavekit:host"]`,
resolved against its stack, is only recorded with it as a description for verify. During a
stack create/update the launches wait for the stack to apply (like the instance path, so the
role, the key policies and the certificate association exist), then `_after_stack_apply`
starts them; later launches (SetDesiredCapacity, UpdateAutoScalingGroup, the replacement of a
terminated instance) start at once. Scale-in, TerminateInstances, group delete and stack delete
terminate instances, whose stop hooks (the EC2 extension's) stop their hosts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from moto.autoscaling.exceptions import AutoscalingClientError
from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends, make_int
from moto.ec2.models.instances import Instance
from moto.ec2.models.launch_templates import LaunchTemplate

from local_backend.moto_ext.cfn_resource import CfnCall, extend_cfn_create
from local_backend.moto_ext.cloudformation.models import after_apply, register_updater, tag_failure
from local_backend.moto_ext.ec2 import instances as ec2_instances
from local_backend.moto_ext.ec2.instances import StackSource

log = logging.getLogger("enclavekit.endpoint.autoscaling")

GROUP_TYPE = "AWS::AutoScaling::AutoScalingGroup"
TEMPLATE_TYPE = "AWS::EC2::LaunchTemplate"
# Set on a moto LaunchTemplate once a stack that defines it has applied (goes with it).
_HOST_ATTR = "_ek_fleet_host"
# Set on a moto LaunchTemplate that CloudFormation created (others come from the EC2 API).
_FROM_STACK_ATTR = "_ek_from_stack"


@dataclass(frozen=True)
class FleetHost(StackSource):
    """Where a fleet's host Metadata comes from: the launch template's resource
    (`logical_id`, an AWS::EC2::LaunchTemplate) in its stack."""

    def applying(self) -> bool:
        return str(getattr(self.stack, "status", "")).endswith("_IN_PROGRESS")


def fleet_host(template: LaunchTemplate | None) -> FleetHost | None:
    """The recorded host of a launch template (None before its stack first applied)."""
    return getattr(template, _HOST_ATTR, None) if template is not None else None


def _group_version_data(group: FakeAutoScalingGroup) -> dict[str, Any]:
    if group.ec2_launch_template is None:
        return {}
    return group.ec2_launch_template.get_version(group.launch_template_version).data or {}


def _associate_profile(instance: Instance, data: dict[str, Any]) -> None:
    """The template's instance profile on a launched instance, as EC2 does for a group."""
    spec = data.get("IamInstanceProfile") or {}
    backend = instance.ec2_backend
    if not spec or instance.id in backend.iam_instance_profile_associations:
        return
    if spec.get("Arn"):
        backend.associate_iam_instance_profile(
            instance_id=instance.id, iam_instance_profile_arn=spec["Arn"]
        )
    elif spec.get("Name"):
        backend.associate_iam_instance_profile(
            instance_id=instance.id, iam_instance_profile_name=spec["Name"]
        )


def start_group_instance(group: FakeAutoScalingGroup, instance: Instance, host: FleetHost) -> None:
    """Run the start hooks for one enclave-enabled group instance (no-op if started)."""
    if not ec2_instances.pending_start(instance):
        return
    log.info("group %s: starting enclave host %s", group.name, instance.id)
    ec2_instances.start_instance(instance, host)


_original_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances


def _replace_instances(
    self: FakeAutoScalingGroup, count_needed: int, propagated_tags: dict[str, str]
) -> None:
    """moto's launch, with the group's template version and instance profile, then start."""
    template = self.ec2_launch_template
    backend = self.autoscaling_backend.ec2_backend
    before = {state.instance.id for state in self.instance_states}
    if template is None:
        _original_replace(self, count_needed, propagated_tags)
        return
    version = str(self.launch_template_version)
    original_run = backend.run_instances

    def run(*args: Any, **kwargs: Any) -> Any:
        spec = kwargs.get("launch_template") or {}
        if spec.get("LaunchTemplateId") == template.id and "Version" not in spec:
            kwargs["launch_template"] = {**spec, "Version": version}
        return original_run(*args, **kwargs)

    backend.run_instances = run
    try:
        _original_replace(self, count_needed, propagated_tags)
    finally:
        del backend.run_instances
    launched = [s.instance for s in self.instance_states if s.instance.id not in before]
    data = _group_version_data(self)
    for instance in launched:
        _associate_profile(instance, data)
    host = fleet_host(template)
    if host is None and not getattr(template, _FROM_STACK_ATTR, False):
        host = FleetHost(stack=None, logical_id=None, metadata=None)  # an API-made template
    if host is None or host.applying():
        return  # the stack is still applying: _after_stack_apply starts them
    failed: list[Instance] = []
    error: Exception | None = None
    for instance in launched:
        try:
            start_group_instance(self, instance, host)
        except Exception as exc:  # noqa: BLE001 - the instance goes, the caller hears why
            failed.append(instance)
            error = error or exc
    if failed:
        ids = {i.id for i in failed}
        self.instance_states = [s for s in self.instance_states if s.instance.id not in ids]
        for instance in failed:
            instance.terminate()
        assert error is not None
        # moto would answer a bare exception with a 500; the caller gets the reason instead
        raise AutoscalingClientError(
            "ValidationError",
            f"group {self.name}: enclave host(s) {', '.join(sorted(ids))} "
            f"failed to start and were terminated: {error}",
        ) from error


def _mark_from_stack(template: LaunchTemplate, call: CfnCall) -> None:
    setattr(template, _FROM_STACK_ATTR, True)


def _template_logical_id(stack: Any, template: LaunchTemplate) -> str | None:
    parsed = stack.resource_map._parsed_resources
    for logical_id, resource_json in stack.template_dict.get("Resources", {}).items():
        if (
            resource_json.get("Type") == TEMPLATE_TYPE
            and getattr(parsed.get(logical_id), "id", None) == template.id
        ):
            return logical_id
    return None


def _after_stack_apply(stack: Any, operation: str) -> None:
    """Record each enclave fleet's resolved host Metadata; start its instances not yet started."""
    from moto.cloudformation.parsing import clean_json

    resources = stack.template_dict.get("Resources", {})
    parsed = stack.resource_map._parsed_resources
    for logical_id, resource_json in resources.items():
        if resource_json.get("Type") != GROUP_TYPE:
            continue
        group = parsed.get(logical_id)
        if not isinstance(group, FakeAutoScalingGroup) or group.ec2_launch_template is None:
            continue
        template = group.ec2_launch_template
        template_id = _template_logical_id(stack, template)
        if template_id is None:
            continue  # a template from outside this stack: its own stack describes it
        metadata = clean_json(resources[template_id].get("Metadata"), stack.resource_map)
        host = FleetHost(stack=stack, logical_id=template_id, metadata=metadata)
        setattr(template, _HOST_ATTR, host)
        for state in list(group.instance_states):
            try:
                start_group_instance(group, state.instance, host)
            except Exception as exc:
                tag_failure(exc, logical_id, GROUP_TYPE)
                raise


def _update_group(
    original: FakeAutoScalingGroup,
    new_name: str,
    cloudformation_json: Any,
    account_id: str,
    region_name: str,
) -> FakeAutoScalingGroup:
    """In-place update (UpdateAutoScalingGroup); a new AutoScalingGroupName replaces it."""
    props = cloudformation_json["Properties"]
    if props.get("AutoScalingGroupName") and props["AutoScalingGroupName"] != original.name:
        FakeAutoScalingGroup.delete_from_cloudformation_json(
            original.name, cloudformation_json, account_id, region_name
        )
        return FakeAutoScalingGroup.create_from_cloudformation_json(
            new_name, cloudformation_json, account_id, region_name
        )
    backend = autoscaling_backends[account_id][region_name]
    return backend.update_auto_scaling_group(
        name=original.name,
        availability_zones=props.get("AvailabilityZones", []),
        desired_capacity=make_int(props.get("DesiredCapacity")),
        max_size=make_int(props.get("MaxSize")),
        min_size=make_int(props.get("MinSize")),
        launch_config_name=props.get("LaunchConfigurationName"),
        launch_template=props.get("LaunchTemplate", {}),
        vpc_zone_identifier=",".join(props.get("VPCZoneIdentifier", [])) or None,  # type: ignore[arg-type]
        health_check_period=make_int(props.get("HealthCheckGracePeriod")),  # type: ignore[arg-type]
        health_check_type=props.get("HealthCheckType"),  # type: ignore[arg-type]
        new_instances_protected_from_scale_in=props.get("NewInstancesProtectedFromScaleIn"),
        mixed_instances_policy=props.get("MixedInstancesPolicy") or None,
    )


def install() -> None:
    """Patch moto's Auto Scaling models (idempotent)."""
    if getattr(FakeAutoScalingGroup, "_enclavekit_patched", False):
        return
    FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace_instances  # type: ignore[method-assign]
    extend_cfn_create(LaunchTemplate, _mark_from_stack)
    register_updater(GROUP_TYPE, _update_group)
    after_apply(_after_stack_apply)
    FakeAutoScalingGroup._enclavekit_patched = True  # type: ignore[attr-defined]
