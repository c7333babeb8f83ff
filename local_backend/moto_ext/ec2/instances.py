"""moto's EC2 instances as Nitro Enclaves has them: EnclaveOptions (from the request or the
launch template; refused with hibernation), the lifecycle that runs the emulator's hooks
(hooks.py) on start, stop and terminate, and `AWS::EC2::Instance` with what CDK emits and moto
drops. A CloudFormation instance starts once its whole stack has applied, so its role, key
policies and certificate association exist when its host boots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import Instance

from ..cfn_resource import CfnCall, patch_cfn_create
from ..cloudformation.models import after_apply, tag_failure
from .hooks import EnclaveInstance, instance_started, instance_stopped, started_instances

INSTANCE_TYPE = "AWS::EC2::Instance"


def enclave_enabled(instance: Instance) -> bool:
    opts = getattr(instance, "enclave_options", None) or {}
    return str(opts.get("Enabled", False)).lower() == "true"


def user_data_of(instance: Instance) -> str | None:
    """The instance's user data as EC2 keeps it (base64), or None."""
    ud: Any = getattr(instance, "user_data", None)
    if isinstance(ud, list):
        ud = ud[0] if ud else None
    if ud is None:
        return None
    if hasattr(ud, "as_bytes"):
        ud = ud.as_bytes()
    if isinstance(ud, bytes):
        ud = ud.decode("ascii", errors="replace")
    return str(ud) or None


def bootable(instance: Instance) -> bool:
    """Whether starting `instance` boots something: an enclave parent or its user data."""
    return enclave_enabled(instance) or user_data_of(instance) is not None


def _ingress_of(instance: Instance) -> tuple[dict[str, Any], ...]:
    rules = []
    for group in getattr(instance, "security_groups", None) or []:
        for rule in getattr(group, "ingress_rules", []):
            rules.append(
                {
                    "group": getattr(group, "id", None),
                    "protocol": str(rule.ip_protocol),
                    "from": None if rule.from_port is None else int(rule.from_port),
                    "to": None if rule.to_port is None else int(rule.to_port),
                }
            )
    return tuple(rules)


def _metadata_options_of(instance: Instance) -> dict[str, str]:
    mo = getattr(instance, "metadata_options", None)
    return {
        "HttpTokens": str(getattr(mo, "http_tokens", "optional")),
        "HttpEndpoint": str(getattr(mo, "http_endpoint", "enabled")),
        "InstanceMetadataTags": str(getattr(mo, "instance_metadata_tags", "disabled")),
    }


def _roles_of_profile(instance: Instance) -> tuple[str | None, tuple[str, ...]]:
    assoc = instance.ec2_backend.iam_instance_profile_associations.get(instance.id)
    if assoc is None:
        return None, ()
    profile = assoc.iam_instance_profile
    return profile.arn, tuple(r.arn for r in profile.roles)


@dataclass(frozen=True)
class StackSource:
    """The stack resource an instance comes from, as its start hooks are told (all None for
    an instance of the EC2 API)."""

    stack: Any = None  # the moto Stack
    logical_id: str | None = None  # the resource that carries the host's Metadata
    metadata: dict[str, Any] | None = None  # that resource's Metadata, intrinsics resolved


def describe_enclave_instance(
    instance: Instance, source: StackSource | None = None
) -> EnclaveInstance:
    """What the hooks are told about `instance` (and persist keeps to boot it again)."""
    source = source or StackSource()
    profile_arn, roles = _roles_of_profile(instance)
    nic = instance.nics.get(0) if instance.nics else None
    return EnclaveInstance(
        instance_id=instance.id,
        account_id=instance.owner_id,
        region=instance.region_name,
        instance_type=instance.instance_type,
        image_id=instance.image_id,
        subnet_id=instance.subnet_id,
        private_ip=nic.private_ip_address if nic else None,
        instance_profile_arn=profile_arn,
        role_arns=roles,
        stack_name=getattr(source.stack, "name", None),
        stack_id=getattr(source.stack, "stack_id", None),
        logical_id=source.logical_id,
        metadata=source.metadata,
        user_data=user_data_of(instance),
        enclave_enabled=enclave_enabled(instance),
        ingress=_ingress_of(instance),
        metadata_options=_metadata_options_of(instance),
        tags={t["key"]: t["value"] for t in instance.get_tags()}
        if hasattr(instance, "get_tags")
        else None,
        availability_zone=getattr(instance.placement, "zone", None),
    )


def pending_start(instance: Instance) -> bool:
    """Whether `instance` should boot now: bootable, running, and not started yet."""
    return bootable(instance) and instance.is_running() and instance.id not in started_instances()


def start_instance(instance: Instance, source: StackSource | None = None) -> EnclaveInstance:
    """Run the start hooks for `instance` (described with its stack resource, if any); what it
    was started with is kept on it, so StartInstances boots it again the same way."""
    info = describe_enclave_instance(instance, source)
    instance._ek_last_info = info  # type: ignore[attr-defined]
    instance_started(info)
    return info


def start_api_instance(instance: Instance) -> None:
    """Start hook for an instance launched through the EC2 API (not CloudFormation)."""
    if pending_start(instance):
        start_instance(instance)


# ------------------------------------------------------------------------ EnclaveOptions


def _template_data(backend: Any, launch_template: dict[str, Any] | None) -> dict[str, Any]:
    if not launch_template:
        return {}
    return backend._get_template_from_args(launch_template).data or {}


def _enclave_options(value: Any) -> dict[str, bool]:
    if value is None:
        return {"Enabled": False}
    if not isinstance(value, dict):
        raise EC2ClientError(
            "InvalidParameterValue",
            f"EnclaveOptions: expected {{Enabled: true|false}}, found {value!r}",
        )
    return {"Enabled": str(value.get("Enabled", False)).lower() == "true"}


_original_instance_init = Instance.__init__
_original_terminate = Instance.terminate
_original_stop = Instance.stop
_original_start = Instance.start


def _instance_init(
    self: Instance,
    ec2_backend: Any,
    image_id: str,
    user_data: Any,
    security_groups: list[Any],
    **kwargs: Any,
) -> None:
    _original_instance_init(self, ec2_backend, image_id, user_data, security_groups, **kwargs)
    data = _template_data(ec2_backend, kwargs.get("launch_template"))
    requested = kwargs.get("enclave_options")
    self.enclave_options = _enclave_options(requested if requested else data.get("EnclaveOptions"))
    if not kwargs.get("metadata_options") and data.get("MetadataOptions"):
        from moto.ec2.models.instances import MetadataOptions

        self.metadata_options = MetadataOptions(data["MetadataOptions"])
    if self.enclave_options["Enabled"] and (self.hibernation_options or {}).get("Configured"):
        raise EC2ClientError(
            "UnsupportedOperation",
            "You can't enable hibernation and Nitro Enclaves on the same instance.",
        )


def _instance_terminate(self: Instance) -> Any:
    previous = _original_terminate(self)
    instance_stopped(self.id)
    # moto leaves the primary ENI of a terminated instance behind, which blocks deleting its
    # subnet and VPC; on AWS the primary interface goes with the instance.
    for nic in list(self.nics.values()):
        if nic.device_index == 0 and nic.id in self.ec2_backend.enis:
            nic.stop()
            self.ec2_backend.enis.pop(nic.id, None)
    return previous


def _instance_stop(self: Instance) -> Any:
    previous = _original_stop(self)
    instance_stopped(self.id)
    return previous


def _instance_start(self: Instance) -> Any:
    previous = _original_start(self)
    info = getattr(self, "_ek_last_info", None)
    if bootable(self) and info is not None:
        instance_started(info)
    return previous


# ------------------------------------------------------------------------ CFN: instances


def _create_instance(call: CfnCall) -> Instance:
    """AWS::EC2::Instance with what CDK emits and moto drops: SecurityGroupIds, LaunchTemplate,
    EnclaveOptions, metadata options, IamInstanceProfile. The start hook runs once the whole
    stack has applied (so the role, key policies and association exist)."""
    props = call.props
    backend = ec2_backends[call.account_id][call.region]
    names = [
        backend.get_security_group_from_id(g).name
        for g in props.get("SecurityGroups", [])
        if backend.get_security_group_from_id(g) is not None
    ]
    launch_template = props.get("LaunchTemplate")
    if launch_template:
        launch_template = {k: str(v) for k, v in launch_template.items()}
    reservation = backend.run_instances(
        image_id=props.get("ImageId"),
        user_data=props.get("UserData"),
        count=1,
        security_group_names=names,
        security_group_ids=list(props.get("SecurityGroupIds", [])),
        instance_type=props.get("InstanceType", "m1.small"),
        is_instance_type_default=not props.get("InstanceType"),
        subnet_id=props.get("SubnetId"),
        key_name=props.get("KeyName"),
        private_ip=props.get("PrivateIpAddress"),
        block_device_mappings=props.get("BlockDeviceMappings", {}),
        launch_template=launch_template or {},
        enclave_options=props.get("EnclaveOptions"),
        hibernation_options=props.get("HibernationOptions"),
        metadata_options=props.get("MetadataOptions") or {},
        region_name=call.region,
    )
    instance = reservation.instances[0]
    for tag in props.get("Tags", []):
        instance.add_tag(tag["Key"], tag["Value"])
    profile = props.get("IamInstanceProfile")
    if profile is None and launch_template:
        profile_spec = _template_data(backend, launch_template).get("IamInstanceProfile") or {}
        profile = profile_spec.get("Name") or profile_spec.get("Arn")
    if profile:
        if str(profile).startswith("arn:"):
            backend.associate_iam_instance_profile(
                instance_id=instance.id, iam_instance_profile_arn=profile
            )
        else:
            backend.associate_iam_instance_profile(
                instance_id=instance.id, iam_instance_profile_name=profile
            )
    return instance


def _after_stack_apply(stack: Any, operation: str) -> None:
    """Start hooks for the stack's enclave instances that are not running an enclave yet."""
    from moto.cloudformation.parsing import clean_json

    resource_map = stack.resource_map
    for logical_id, resource_json in stack.template_dict.get("Resources", {}).items():
        if resource_json.get("Type") != INSTANCE_TYPE:
            continue
        instance = resource_map._parsed_resources.get(logical_id)
        if not isinstance(instance, Instance) or not pending_start(instance):
            continue
        metadata = clean_json(resource_json.get("Metadata"), resource_map)
        try:
            start_instance(instance, StackSource(stack, logical_id, metadata))
        except Exception as exc:
            tag_failure(exc, logical_id, INSTANCE_TYPE)
            raise


def install() -> None:
    """Patch moto's Instance (idempotent)."""
    if getattr(Instance, "_enclavekit_patched", False):
        return
    Instance.__init__ = _instance_init  # type: ignore[method-assign]
    Instance.terminate = _instance_terminate  # type: ignore[method-assign]
    Instance.stop = _instance_stop  # type: ignore[method-assign]
    Instance.start = _instance_start  # type: ignore[method-assign]
    Instance.VALID_ATTRIBUTES = Instance.VALID_ATTRIBUTES | {"enclaveOptions"}
    patch_cfn_create(Instance, _create_instance)
    after_apply(_after_stack_apply)
    Instance._enclavekit_patched = True  # type: ignore[attr-defined]
