"""EC2 for Nitro Enclaves on moto: EnclaveOptions, instance start/stop hooks for the emulator,
ACM-for-Nitro-Enclaves certificate associations, and the CloudFormation resources moto lacks.

The certificate association does what AWS's does (kms-acm-cloudformation.md §3): the certificate,
its chain and its private key go into an S3 object `<role_arn>/<certificate_arn>` in the bucket
`aws-ec2-enclave-certificate-<region>-prod`; the private key PEM is encrypted with KMS under a
key of a separate local *service account* (SERVICE_ACCOUNT, standing in for the AWS-owned
account). That key's policy releases kms:Decrypt only to the associated roles, and only to an
attested enclave running *ACM's enclave image*: on AWS that is the image the
`aws-nitro-enclaves-acm` package ships; here it is the image enclavekit builds for that package
(local_backend.acm_enclave, `p11ne_measurements()`), named by `StringEqualsIgnoreCase
kms:RecipientAttestation:ImageSha384` = its PCR0. Never a user's image: an enclave host whose own
image claims the certificate (set-up C) is denied, as on AWS; a debug-mode enclave (PCR0 zero)
and every unattested call are denied too. The bucket lives in the service account too (moto
resolves bucket names across accounts), so the only way to the key is S3 GetObject + attested
kms:Decrypt, as on AWS. Decrypting a ciphertext of a service-account key is routed by the KMS
extension: the blob names the key id; `service_account_key_ids()` lists those keys.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moto.core.common_models import CloudFormationModel
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import Instance
from moto.ec2.models.route_tables import Route, RouteTable
from moto.ec2.models.subnets import SubnetRouteTableAssociation
from moto.iam.models import iam_backends
from moto.kms.models import kms_backends

from enclavekit.policy.kms_actions import KMS_ADMIN_ACTIONS
from local_backend.moto_ext.acm.models import certificate_material
from local_backend.moto_ext.s3 import models as s3_ext

log = logging.getLogger("enclavekit.endpoint.ec2")

# The local stand-in for the AWS-owned account that holds the ACM-for-Nitro-Enclaves bucket and
# KMS key. Not the customer account (123456789012), so nothing there can read or manage them.
SERVICE_ACCOUNT = "000000000000"
ENCRYPTION_METHOD = "KMS"  # field value of AWS's object is not documented; ours names KMS
_ROLE_ARN = re.compile(r"^arn:aws:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_CERT_ARN = re.compile(r"^arn:aws:acm:([a-z0-9-]+):(\d{12}):certificate/[\w-]+$")

_lock = threading.RLock()


# ------------------------------------------------------------------------ hooks for the emulator


@dataclass(frozen=True)
class EnclaveInstance:
    """What the emulator needs to boot (or stop) an enclave-enabled instance's parent."""

    instance_id: str
    account_id: str
    region: str
    instance_type: str
    image_id: str
    subnet_id: str | None
    private_ip: str | None
    instance_profile_arn: str | None
    role_arns: tuple[str, ...]
    stack_name: str | None = None
    stack_id: str | None = None
    logical_id: str | None = None
    # The resource's `Metadata` with intrinsics resolved against the deployed stack.
    metadata: dict[str, Any] | None = None
    # What the instance host needs to run the instance's user data (local_backend.host).
    user_data: str | None = None  # base64, as EC2 stores it
    enclave_enabled: bool = True
    ingress: tuple[dict[str, Any], ...] = ()  # TCP/UDP rules of its security groups
    metadata_options: dict[str, str] | None = None  # HttpTokens, HttpEndpoint, ...
    tags: dict[str, str] | None = None
    availability_zone: str | None = None


_start_hooks: list[Callable[[EnclaveInstance], None]] = []
_stop_hooks: list[Callable[[EnclaveInstance], None]] = []
_started: dict[str, EnclaveInstance] = {}


def on_instance_start(fn: Callable[[EnclaveInstance], None]) -> Callable[[EnclaveInstance], None]:
    """Call `fn(info)` when an enclave-enabled instance starts (RunInstances, StartInstances, or
    a CloudFormation create/update once the stack has applied). An exception fails the request
    (a CloudFormation create then rolls back). Usable as a decorator."""
    if fn not in _start_hooks:
        _start_hooks.append(fn)
    return fn


def on_instance_stop(fn: Callable[[EnclaveInstance], None]) -> Callable[[EnclaveInstance], None]:
    """Call `fn(info)` when a started enclave-enabled instance stops or terminates (also on stack
    delete, rollback and endpoint shutdown). Exceptions are logged, never block termination."""
    if fn not in _stop_hooks:
        _stop_hooks.append(fn)
    return fn


_console_providers: list[Callable[[str], str | None]] = []


def on_console_output(fn: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """`fn(instance_id) -> base64 console output | None`: what GetConsoleOutput returns."""
    if fn not in _console_providers:
        _console_providers.append(fn)
    return fn


def console_output(instance_id: str) -> str | None:
    for fn in list(_console_providers):
        out = fn(instance_id)
        if out is not None:
            return out
    return None


def clear_hooks() -> None:
    """Forget every registered hook (tests)."""
    _start_hooks.clear()
    _stop_hooks.clear()


def started_instances() -> dict[str, EnclaveInstance]:
    """The enclave-enabled instances whose start hooks ran and whose stop hooks have not."""
    with _lock:
        return dict(_started)


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


def describe_enclave_instance(
    instance: Instance,
    *,
    stack: Any = None,
    logical_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> EnclaveInstance:
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
        stack_name=getattr(stack, "name", None),
        stack_id=getattr(stack, "stack_id", None),
        logical_id=logical_id,
        metadata=metadata,
        user_data=user_data_of(instance),
        enclave_enabled=enclave_enabled(instance),
        ingress=_ingress_of(instance),
        metadata_options=_metadata_options_of(instance),
        tags={t["key"]: t["value"] for t in instance.get_tags()}
        if hasattr(instance, "get_tags")
        else None,
        availability_zone=getattr(instance.placement, "zone", None),
    )


def _fire_start(info: EnclaveInstance) -> None:
    with _lock:
        if info.instance_id in _started:
            return
        _started[info.instance_id] = info
    try:
        for fn in list(_start_hooks):
            fn(info)
    except Exception:
        _fire_stop(info.instance_id)
        raise


def _fire_stop(instance_id: str) -> None:
    with _lock:
        info = _started.pop(instance_id, None)
    if info is None:
        return
    for fn in list(_stop_hooks):
        try:
            fn(info)
        except Exception:  # noqa: BLE001 - a stop must always complete
            log.exception("stop hook failed for %s", instance_id)


def stop_all_enclave_instances() -> None:
    """Run the stop hooks of every started enclave instance (endpoint shutdown)."""
    for instance_id in list(started_instances()):
        _fire_stop(instance_id)


def boot_again(info: EnclaveInstance) -> None:
    """Run the start hooks of an instance that was running when the endpoint stopped
    (local_backend.persist restores it); raises as a first start would."""
    _fire_start(info)


def start_api_instance(instance: Instance) -> None:
    """Start hook for an instance launched through the EC2 API (not CloudFormation)."""
    if bootable(instance) and instance.is_running():
        info = describe_enclave_instance(instance)
        instance._ek_last_info = info  # type: ignore[attr-defined] # StartInstances boots it again
        _fire_start(info)


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
    _fire_stop(self.id)
    # moto leaves the primary ENI of a terminated instance behind, which blocks deleting its
    # subnet and VPC; on AWS the primary interface goes with the instance.
    for nic in list(self.nics.values()):
        if nic.device_index == 0 and nic.id in self.ec2_backend.enis:
            nic.stop()
            self.ec2_backend.enis.pop(nic.id, None)
    return previous


def _instance_stop(self: Instance) -> Any:
    previous = _original_stop(self)
    _fire_stop(self.id)
    return previous


def _instance_start(self: Instance) -> Any:
    previous = _original_start(self)
    info = getattr(self, "_ek_last_info", None)
    if bootable(self) and info is not None:
        _fire_start(info)
    return previous


# ------------------------------------------------------------------------ CFN: instances


def _create_instance(
    cls: type[Instance],
    resource_name: str,
    cloudformation_json: Any,
    account_id: str,
    region_name: str,
    **kwargs: Any,
) -> Instance:
    """AWS::EC2::Instance with what CDK emits and moto drops: SecurityGroupIds, LaunchTemplate,
    EnclaveOptions, metadata options, IamInstanceProfile. The start hook runs once the whole
    stack has applied (so the role, key policies and association exist)."""
    props = cloudformation_json["Properties"]
    backend = ec2_backends[account_id][region_name]
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
        region_name=region_name,
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
        if resource_json.get("Type") != "AWS::EC2::Instance":
            continue
        instance = resource_map._parsed_resources.get(logical_id)
        if not isinstance(instance, Instance) or not bootable(instance):
            continue
        if instance.id in started_instances() or not instance.is_running():
            continue
        metadata = clean_json(resource_json.get("Metadata"), resource_map)
        info = describe_enclave_instance(
            instance, stack=stack, logical_id=logical_id, metadata=metadata
        )
        instance._ek_last_info = info  # type: ignore[attr-defined]
        try:
            _fire_start(info)
        except Exception as exc:
            exc._ek_logical_id = logical_id  # type: ignore[attr-defined]
            exc._ek_type = "AWS::EC2::Instance"  # type: ignore[attr-defined]
            raise


# ------------------------------------------------------------------------ CFN: routing deletes


def _route_table_delete(self: RouteTable, account_id: str, region_name: str) -> None:
    backend = ec2_backends[account_id][region_name]
    for association_id in list(self._associations):
        backend.disassociate_route_table(association_id)
    backend.route_tables.pop(self.id, None)


def _create_subnet_rt_association(
    cls: type[SubnetRouteTableAssociation],
    resource_name: str,
    cloudformation_json: Any,
    account_id: str,
    region_name: str,
    **kwargs: Any,
) -> SubnetRouteTableAssociation:
    props = cloudformation_json["Properties"]
    backend = ec2_backends[account_id][region_name]
    association = backend.create_subnet_association(
        route_table_id=props["RouteTableId"], subnet_id=props["SubnetId"]
    )
    association.association_id = backend.associate_route_table(  # type: ignore[attr-defined]
        props["RouteTableId"], subnet_id=props["SubnetId"]
    )
    association.account_id = account_id  # type: ignore[attr-defined]
    association.region_name = region_name  # type: ignore[attr-defined]
    return association


def _subnet_rt_association_id(self: SubnetRouteTableAssociation) -> str:
    return getattr(self, "association_id", None) or self.route_table_id


def _subnet_rt_association_delete(
    self: SubnetRouteTableAssociation, account_id: str, region_name: str
) -> None:
    backend = ec2_backends[account_id][region_name]
    backend.subnet_associations.pop(f"{self.route_table_id}:{self.subnet_id}", None)
    association_id = getattr(self, "association_id", None)
    if association_id:
        rt = backend.route_tables.get(self.route_table_id)
        if rt is not None and association_id in rt._associations:
            backend.disassociate_route_table(association_id)


def _route_delete(self: Route, account_id: str, region_name: str) -> None:
    self.route_table._routes.pop(self.id, None)


# ------------------------------------------------------------------------ certificate associations


@dataclass(frozen=True)
class CertificateAssociation:
    """One ACM certificate associated with one IAM role (what the three GetAtts return)."""

    certificate_arn: str
    role_arn: str
    bucket: str
    object_key: str
    kms_key_id: str

    def to_api(self) -> dict[str, str]:
        return {
            "AssociatedRoleArn": self.role_arn,
            "CertificateS3BucketName": self.bucket,
            "CertificateS3ObjectKey": self.object_key,
            "EncryptionKmsKeyId": self.kms_key_id,
        }


# (account, region) -> {(certificate_arn, role_arn): association}
_associations: dict[tuple[str, str], dict[tuple[str, str], CertificateAssociation]] = {}
_service_keys: dict[str, str] = {}  # region -> key id in SERVICE_ACCOUNT


def bucket_name(region: str) -> str:
    return f"aws-ec2-enclave-certificate-{region}-prod"


def service_account_key_ids() -> dict[str, str]:
    """region -> id of the service-account KMS key that encrypts associated private keys."""
    with _lock:
        return dict(_service_keys)


def acm_image_sha384() -> str:
    """PCR0 (hex) of ACM's enclave image, the only image the association key releases to."""
    from local_backend.acm_enclave import p11ne_measurements

    return p11ne_measurements().image_sha384


def _service_key_policy(roles: list[str]) -> str:
    """The service key's policy: Decrypt for each associated role, from ACM's image only."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ServiceAccountAdministration",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{SERVICE_ACCOUNT}:root"},
            "Action": [*KMS_ADMIN_ACTIONS, "kms:Encrypt"],
            "Resource": "*",
        }
    ]
    image = acm_image_sha384() if roles else None
    for n, role in enumerate(sorted(roles)):
        statements.append(
            {
                "Sid": f"ReleaseToAcmEnclaveOfAssociatedRole{n}",
                "Effect": "Allow",
                "Principal": {"AWS": role},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": image}
                },
            }
        )
    return json.dumps(
        {"Version": "2012-10-17", "Id": "aws-ec2-enclave-certificate", "Statement": statements}
    )


def _ensure_service_key(region: str) -> str:
    backend = kms_backends[SERVICE_ACCOUNT][region]
    key_id = _service_keys.get(region)
    if key_id is None or key_id not in backend.keys:
        key = backend.create_key(
            policy=_service_key_policy([]),
            key_usage="ENCRYPT_DECRYPT",
            key_spec="SYMMETRIC_DEFAULT",
            description="ACM for Nitro Enclaves certificate keys (local)",
            tags=None,
        )
        key_id = _service_keys[region] = key.id
    return key_id


def _refresh_service_key_policy(region: str) -> None:
    roles = sorted(
        {
            a.role_arn
            for (_acct, reg), table in _associations.items()
            if reg == region
            for a in table.values()
        }
    )
    key_id = _ensure_service_key(region)
    kms_backends[SERVICE_ACCOUNT][region].put_key_policy(key_id, _service_key_policy(roles))


def _invalid(message: str) -> EC2ClientError:
    return EC2ClientError("InvalidParameterValue", message)


def _check_arns(account_id: str, region: str, certificate_arn: Any, role_arn: Any) -> None:
    if not isinstance(certificate_arn, str) or not (m := _CERT_ARN.match(certificate_arn)):
        raise _invalid(
            f"CertificateArn: expected arn:aws:acm:<region>:<account>:certificate/<id>, "
            f"found {certificate_arn!r}"
        )
    if m.group(1) != region or m.group(2) != account_id:
        raise _invalid(
            f"CertificateArn: the certificate must be in {account_id}/{region}, "
            f"found {certificate_arn}"
        )
    if not isinstance(role_arn, str) or not _ROLE_ARN.match(role_arn):
        raise _invalid(f"RoleArn: expected arn:aws:iam::<account>:role/<name>, found {role_arn!r}")


def _association_object(
    region: str, key_id: str, cert_pem: str, chain_pem: str, key_pem: bytes
) -> bytes:
    """The association's S3 object: certificate, chain, the key encrypted under `key_id`."""
    blob, _arn = kms_backends[SERVICE_ACCOUNT][region].encrypt(key_id, key_pem, {})
    return json.dumps(
        {
            "certificate": cert_pem,
            "certificateChain": chain_pem,
            "encryptedPrivateKey": base64.b64encode(blob).decode(),
            "encryptionMethod": ENCRYPTION_METHOD,
        }
    ).encode()


def associate(
    account_id: str, region: str, certificate_arn: str, role_arn: str
) -> CertificateAssociation:
    """AssociateEnclaveCertificateIamRole: write the S3 object and allow the role on the key."""
    _check_arns(account_id, region, certificate_arn, role_arn)
    try:
        iam_backends[account_id]["global"].get_role_by_arn(role_arn)
    except Exception as exc:  # moto raises IAMNotFoundException
        raise _invalid(f"RoleArn: role {role_arn} does not exist") from exc
    try:
        cert_pem, chain_pem, key_pem = certificate_material(account_id, region, certificate_arn)
    except Exception as exc:
        raise _invalid(f"CertificateArn: certificate {certificate_arn} does not exist") from exc
    with _lock:
        table = _associations.setdefault((account_id, region), {})
        existing = table.get((certificate_arn, role_arn))
        if existing is not None:
            return existing
        key_id = _ensure_service_key(region)
        body = _association_object(region, key_id, cert_pem, chain_pem, key_pem)
        del key_pem
        bucket, object_key = bucket_name(region), f"{role_arn}/{certificate_arn}"
        s3_ext.ensure_bucket(SERVICE_ACCOUNT, region, bucket)
        s3_ext.put_object(SERVICE_ACCOUNT, bucket, object_key, body)
        assoc = CertificateAssociation(certificate_arn, role_arn, bucket, object_key, key_id)
        table[(certificate_arn, role_arn)] = assoc
        _refresh_service_key_policy(region)
    log.info("associated %s with %s -> s3://%s/%s", certificate_arn, role_arn, bucket, object_key)
    return assoc


def republish(account_id: str, region: str, certificate_arn: str) -> list[str]:
    """After ACM renewed `certificate_arn`: each association's S3 object written again with
    the new certificate, chain and encrypted key (same bucket, object key and KMS key), as
    ACM does for an associated certificate. The object keys written."""
    cert_pem, chain_pem, key_pem = certificate_material(account_id, region, certificate_arn)
    done = []
    with _lock:
        for (cert, _role), assoc in _associations.get((account_id, region), {}).items():
            if cert != certificate_arn:
                continue
            body = _association_object(region, assoc.kms_key_id, cert_pem, chain_pem, key_pem)
            s3_ext.put_object(SERVICE_ACCOUNT, assoc.bucket, assoc.object_key, body)
            done.append(assoc.object_key)
    del key_pem
    log.info("renewed %s: re-published %d association object(s)", certificate_arn, len(done))
    return done


def associated_roles(
    account_id: str, region: str, certificate_arn: str
) -> list[CertificateAssociation]:
    """GetAssociatedEnclaveCertificateIamRoles."""
    if not isinstance(certificate_arn, str) or not _CERT_ARN.match(certificate_arn):
        raise _invalid(
            f"CertificateArn: expected an ACM certificate ARN, found {certificate_arn!r}"
        )
    with _lock:
        table = _associations.get((account_id, region), {})
        return [a for (c, _r), a in table.items() if c == certificate_arn]


def disassociate(account_id: str, region: str, certificate_arn: str, role_arn: str) -> bool:
    """DisassociateEnclaveCertificateIamRole: remove the object and the role's key access."""
    _check_arns(account_id, region, certificate_arn, role_arn)
    with _lock:
        table = _associations.get((account_id, region), {})
        assoc = table.pop((certificate_arn, role_arn), None)
        if assoc is None:
            raise _invalid(
                f"The certificate {certificate_arn} is not associated with the role {role_arn}"
            )
        s3_ext.delete_object(SERVICE_ACCOUNT, assoc.bucket, assoc.object_key)
        _refresh_service_key_policy(region)
    log.info("disassociated %s from %s", certificate_arn, role_arn)
    return True


class EnclaveCertificateIamRoleAssociation(CloudFormationModel):
    """`AWS::EC2::EnclaveCertificateIamRoleAssociation` with its three GetAtt attributes."""

    ATTRIBUTES = {
        "CertificateS3BucketName": "bucket",
        "CertificateS3ObjectKey": "object_key",
        "EncryptionKmsKeyId": "kms_key_id",
    }

    def __init__(self, account_id: str, region: str, association: CertificateAssociation):
        self.account_id = account_id
        self.region = region
        self.association = association

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EC2::EnclaveCertificateIamRoleAssociation"

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @property
    def physical_resource_id(self) -> str:
        # Ref is not documented by AWS; the certificate|role pair identifies the association.
        return f"{self.association.certificate_arn}|{self.association.role_arn}"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in cls.ATTRIBUTES

    def get_cfn_attribute(self, attribute_name: str) -> str:
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        if attribute_name not in self.ATTRIBUTES:
            raise UnformattedGetAttTemplateException()
        return getattr(self.association, self.ATTRIBUTES[attribute_name])

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> EnclaveCertificateIamRoleAssociation:
        props = cloudformation_json.get("Properties", {})
        assoc = associate(
            account_id, region_name, props.get("CertificateArn"), props.get("RoleArn")
        )
        return cls(account_id, region_name, assoc)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls,
        original_resource: EnclaveCertificateIamRoleAssociation,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> EnclaveCertificateIamRoleAssociation:
        props = cloudformation_json.get("Properties", {})
        old = original_resource.association
        if (props.get("CertificateArn"), props.get("RoleArn")) == (
            old.certificate_arn,
            old.role_arn,
        ):
            return original_resource
        new = cls.create_from_cloudformation_json(
            new_resource_name, cloudformation_json, account_id, region_name
        )
        original_resource.delete(account_id, region_name)
        return new

    def delete(self, account_id: str, region_name: str) -> None:
        a = self.association
        if (a.certificate_arn, a.role_arn) in _associations.get((self.account_id, self.region), {}):
            disassociate(self.account_id, self.region, a.certificate_arn, a.role_arn)


def install() -> None:
    """Patch moto's EC2 models (idempotent)."""
    from local_backend.moto_ext.cloudformation import models as cfn_ext

    if getattr(Instance, "_enclavekit_patched", False):
        return
    Instance.__init__ = _instance_init  # type: ignore[method-assign]
    Instance.terminate = _instance_terminate  # type: ignore[method-assign]
    Instance.stop = _instance_stop  # type: ignore[method-assign]
    Instance.start = _instance_start  # type: ignore[method-assign]
    Instance.VALID_ATTRIBUTES = Instance.VALID_ATTRIBUTES | {"enclaveOptions"}
    Instance.create_from_cloudformation_json = classmethod(_create_instance)  # type: ignore[assignment]
    RouteTable.delete = _route_table_delete  # type: ignore[attr-defined]
    Route.delete = _route_delete  # type: ignore[attr-defined]
    SubnetRouteTableAssociation.create_from_cloudformation_json = classmethod(  # type: ignore[assignment]
        _create_subnet_rt_association
    )
    SubnetRouteTableAssociation.physical_resource_id = property(  # type: ignore[assignment,method-assign]
        _subnet_rt_association_id
    )
    SubnetRouteTableAssociation.delete = _subnet_rt_association_delete  # type: ignore[attr-defined]
    cfn_ext.after_apply(_after_stack_apply)
    Instance._enclavekit_patched = True  # type: ignore[attr-defined]
