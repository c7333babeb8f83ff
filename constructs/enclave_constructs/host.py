"""EnclaveHost: an enclave-enabled parent instance (or a fleet of them) with IMDSv2 required.

Every check that can be made from the props is made in the constructor and raises
`InvalidInput` quoting the wrong value and what is allowed; the one thing that can change
later (hibernation switched on through an escape hatch) is a `node.add_validation` check.

A host that runs an EIF also runs the parent agent. It ships with the stack like the EIF: an
S3 asset (`AgentBundle`, built by `enclavekit.agent_bundle`) that the role may read, fetched
by the user data with the AWS CLI and checked against the SHA-256 rendered into it. Egress:
the parent needs what `dnf` already needs (NAT, or VPC endpoints for S3, SSM, EC2, KMS and
STS), and PyPI for the pinned boto3 (NAT, or an index mirror set in /etc/pip.conf).
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import CfnElement, IStableAnyProducer, IStableStringProducer, Lazy, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct, IValidation
from enclavekit import agent_bundle, instance_types
from enclavekit.contract import HOST_METADATA_KEY
from enclavekit.errors import InvalidInput

from .attested_key import grant_attested_decrypt, keys_granted_to
from .image import EnclaveImage, ImageAsset
from .spec import AgentSpec, CertificateSpec, HostSpec, ImageSpec, SecretSpec

DEFAULT_INSTANCE_TYPE = "m5a.xlarge"
# An AMI id the local endpoint (moto) knows; pass `machine_image` for a real AL2023 AMI.
DEFAULT_AMI = {"us-east-1": "ami-12c6146b"}
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True)
class FleetOptions:
    """Run the host as a launch template + Auto Scaling group of `min_capacity..max_capacity`."""

    min_capacity: int = 1
    max_capacity: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.min_capacity, self.max_capacity
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
            raise InvalidInput(
                "fleet capacity must satisfy 0 <= min_capacity <= max_capacity, max >= 1, "
                f"got min_capacity={lo!r} max_capacity={hi!r}"
            )


@jsii.implements(IStableAnyProducer, IStableStringProducer)
class _SpecProducer:
    """One rendering of the host's spec (its Metadata, its user data), made at synth: the
    spec is complete only once every construct that adds to the host has run."""

    def __init__(self, host: EnclaveHost, render: Callable[[HostSpec], Any]) -> None:
        self._host = host
        self._render = render

    def produce(self) -> Any:
        return self._render(self._host.spec())


@jsii.implements(IValidation)
class _NoHibernation:
    """Hibernation and enclaves cannot be on the same instance (EC2 RunInstances)."""

    def __init__(self, host: EnclaveHost) -> None:
        self._host = host

    def validate(self) -> list[str]:
        stack = Stack.of(self._host)
        l1 = self._host.cfn_resource
        if isinstance(l1, ec2.CfnInstance):
            opts = stack.resolve(l1.hibernation_options)
        else:
            opts = _get_ci(stack.resolve(l1.launch_template_data), "hibernationoptions")
        if _get_ci(opts, "configured") is True:
            return [
                f"enclave host {self._host.node.path} has hibernation configured "
                f"({opts!r}); expected no hibernation: EC2 cannot hibernate an enclave parent"
            ]
        return []


def _get_ci(obj: Any, key: str) -> Any:
    """A key of a resolved L1 struct, whatever its casing (jsii structs resolve camelCase)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.lower() == key:
                return v
    return None


def _instance_type_name(value: str | ec2.InstanceType) -> str:
    if isinstance(value, ec2.InstanceType):
        return value.to_string()
    if isinstance(value, str):
        return value
    raise InvalidInput(
        f"instance_type must be a string like 'm5a.xlarge' or an ec2.InstanceType, got {value!r}"
    )


@jsii.implements(iam.IGrantable)
class EnclaveHost(Construct):
    """A Nitro Enclaves parent: instance (or fleet), role, user data and host Metadata.

    An iam.IGrantable: grants to the host go to its role, the principal its enclave's KMS calls
    come from.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        vpc: ec2.IVpc,
        image: EnclaveImage | None = None,
        instance_type: str | ec2.InstanceType = DEFAULT_INSTANCE_TYPE,
        enclave_cpu_count: int = 2,
        enclave_memory_mib: int = 512,
        certificate: acm.ICertificate | str | None = None,
        debug_mode: bool = False,
        service_port: int = 443,
        domain: str | None = None,
        machine_image: ec2.IMachineImage | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        fleet: FleetOptions | None = None,
        role: iam.IRole | None = None,
    ) -> None:
        """Validate the props, then create the role, the security group and the instance(s).

        `image`: what the enclave runs (None with a certificate = ACM's own token enclave).
        `certificate`: an ACM certificate or ARN to associate (creates an EnclaveCertificate).
        `debug_mode`: only with an image from `EnclaveImage.debug(...)`.
        """
        super().__init__(scope, id)
        type_name = _instance_type_name(instance_type)
        itype = instance_types.lookup(type_name)
        reason = instance_types.why_not(itype)
        if reason:
            raise InvalidInput(
                f"instance_type must be enclave-capable (for example "
                f"{', '.join(instance_types.enclave_capable_types()[:4])}, m5a.xlarge), "
                f"got {type_name!r}: {reason}"
            )
        problems = instance_types.allocator_problems(itype, enclave_cpu_count, enclave_memory_mib)
        if problems:
            raise InvalidInput(
                f"enclave allocator does not fit {itype.name}: {'; '.join(problems)}"
            )
        if (
            not isinstance(service_port, int)
            or isinstance(service_port, bool)
            or not (1 <= service_port <= 65535)
        ):
            raise InvalidInput(f"service_port must be a TCP port 1-65535, got {service_port!r}")
        if domain is not None and not _DOMAIN.match(domain):
            raise InvalidInput(
                f"domain must be a lower-case DNS name like 'app.example.test', got {domain!r}"
            )
        if image is not None and not isinstance(image, EnclaveImage):
            raise InvalidInput(f"image must be an EnclaveImage, got {image!r}")
        if debug_mode and (image is None or not image.is_debug):
            raise InvalidInput(
                "debug_mode=True zeroes the enclave's PCRs, so it needs an image from "
                "EnclaveImage.debug(..., i_understand_debug_images_have_no_attestation=True), "
                f"got {image!r}"
            )
        if image is not None and image.is_debug:
            debug_mode = True
        if fleet is not None and not isinstance(fleet, FleetOptions):
            raise InvalidInput(
                f"fleet must be FleetOptions(min_capacity, max_capacity), got {fleet!r}"
            )

        self.instance_type = itype
        self.image = image
        self.enclave_cpu_count = enclave_cpu_count
        self.enclave_memory_mib = enclave_memory_mib
        self.debug_mode = bool(debug_mode)
        self.service_port = service_port
        self.domain = domain
        self._secrets: list[tuple[str, Any, str]] = []

        self.role: iam.IRole = role or iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com")
        )
        self.grant_principal = self.role.grant_principal
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            allow_all_outbound=True,
            description="enclavekit enclave host",
        )
        self.connections = ec2.Connections(
            security_groups=[self.security_group], default_port=ec2.Port.tcp(service_port)
        )
        self.image_asset: ImageAsset | None = image.bind(self) if image else None
        if self.image_asset is not None:
            self.image_asset.asset.grant_read(self.role)
        self.agent_asset: s3_assets.Asset | None = None
        self._agent_sha256: str | None = None
        if image is not None and (image.host_path or self.image_asset is not None):
            path, self._agent_sha256 = _agent_bundle_file()
            self.agent_asset = s3_assets.Asset(self, "AgentBundle", path=str(path))
            self.agent_asset.grant_read(self.role)

        self.user_data = ec2.UserData.for_linux()
        self.user_data.add_commands(Lazy.string(_SpecProducer(self, HostSpec.user_data)))
        machine = machine_image or ec2.MachineImage.generic_linux(DEFAULT_AMI)
        subnets = vpc_subnets or ec2.SubnetSelection(subnet_type=_first_subnet_type(vpc))
        self.instance: ec2.Instance | None = None
        self.launch_template: ec2.LaunchTemplate | None = None
        self.auto_scaling_group: autoscaling.AutoScalingGroup | None = None
        # What a single host and a fleet's launch template share: type, image, role, network,
        # user data, IMDSv2 (each adds its own enclave switch).
        launch: dict[str, Any] = {
            "instance_type": ec2.InstanceType(itype.name),
            "machine_image": machine,
            "role": self.role,
            "security_group": self.security_group,
            "user_data": self.user_data,
            "require_imdsv2": True,
        }
        if fleet is None:
            self.instance = ec2.Instance(
                self,
                "Resource",
                vpc=vpc,
                enclave_enabled=True,
                vpc_subnets=subnets,
                user_data_causes_replacement=True,
                **launch,
            )
            self.cfn_resource: ec2.CfnInstance | ec2.CfnLaunchTemplate = (
                self.instance.node.default_child  # type: ignore[assignment]
            )
        else:
            self.launch_template = ec2.LaunchTemplate(
                self, "LaunchTemplate", nitro_enclave_enabled=True, **launch
            )
            self.auto_scaling_group = autoscaling.AutoScalingGroup(
                self,
                "Fleet",
                vpc=vpc,
                launch_template=self.launch_template,
                min_capacity=fleet.min_capacity,
                max_capacity=fleet.max_capacity,
                vpc_subnets=subnets,
            )
            self.cfn_resource = self.launch_template.node.default_child  # type: ignore[assignment]
        self.cfn_resource.add_metadata(
            HOST_METADATA_KEY, Lazy.any(_SpecProducer(self, HostSpec.metadata))
        )
        self.node.add_validation(_NoHibernation(self))

        self.certificate = None
        if certificate is not None:
            from .certificate import EnclaveCertificate

            self.certificate = EnclaveCertificate(
                self, "Certificate", certificate=certificate, role=self.role
            )
            if self.agent_asset is not None:
                # The parent agent finds the association's S3 object through EC2.
                self.role.add_to_principal_policy(
                    iam.PolicyStatement(
                        actions=["ec2:GetAssociatedEnclaveCertificateIamRoles"],
                        resources=[self.certificate.certificate_arn],
                    )
                )

    # ------------------------------------------------------------------ spec
    def spec(self) -> HostSpec:
        """The frozen description both the Metadata and the user data are rendered from."""
        image = None
        if self.image is not None:
            image = ImageSpec(
                name=self.image.name,
                slug=self.image.slug,
                measurements=self.image.measurements,
                debug=self.image.is_debug,
                asset_bucket=self.image_asset.bucket if self.image_asset else None,
                asset_key=self.image_asset.key if self.image_asset else None,
                host_path=self.image.host_path,
            )
        cert = None
        if self.certificate is not None:
            cert = CertificateSpec(
                arn=self.certificate.certificate_arn,
                association=self.certificate.association.logical_id,
            )
        agent = None
        if self.agent_asset is not None and self._agent_sha256 is not None:
            agent = AgentSpec(
                bucket=self.agent_asset.s3_bucket_name,
                key=self.agent_asset.s3_object_key,
                sha256=self._agent_sha256,
                requirements=agent_bundle.runtime_requirements(),
            )
        role_l1 = self.role.node.default_child
        return HostSpec(
            image=image,
            cpu_count=self.enclave_cpu_count,
            memory_mib=self.enclave_memory_mib,
            debug_mode=self.debug_mode,
            port=self.service_port,
            domain=self.domain,
            role=role_l1.logical_id if role_l1 is not None else self.role.role_name,
            region=Stack.of(self).region,
            certificate=cert,
            secrets=tuple(
                SecretSpec(name=n, key=_key_logical_id(k), parameter=p) for n, k, p in self._secrets
            ),
            attested_keys=tuple(dict.fromkeys(_key_logical_id(k) for k in keys_granted_to(self))),
            agent=agent,
        )

    # ------------------------------------------------------------------ wiring
    def register_secret(self, name: str, key: Any, parameter_name: str) -> None:
        """Record a sealed secret in the host Metadata (EnclaveSecret calls this)."""
        if any(n == name for n, _, _ in self._secrets):
            raise InvalidInput(
                f"secret name must be unique on host {self.node.path}, got {name!r} twice"
            )
        self._secrets.append((name, key, parameter_name))

    def has_attested_key(self, key: Any) -> bool:
        """Whether `key` (a kms.Key or AttestedKey) was granted to this host's enclave."""
        return _key_logical_id(key) in {_key_logical_id(k) for k in keys_granted_to(self)}

    # ------------------------------------------------------------------ grants
    def grant_attested_decrypt(self, key: Any, *, pcrs: tuple[int, ...] = (0, 1, 2)) -> iam.Grant:
        """Let this host's enclave (and only an attested one) decrypt with `key`."""
        return grant_attested_decrypt(key, self, self._require_image(), pcrs=pcrs)

    def grant_read_parameter(self, parameter: Any) -> iam.Grant:
        """Let the host role read an SSM parameter (sealed secrets are ciphertext)."""
        return parameter.grant_read(self.role)

    def _require_image(self) -> EnclaveImage:
        if self.image is None:
            raise InvalidInput(
                f"enclave host {self.node.path} has no image; expected an EnclaveImage to bind "
                "keys to, got None"
            )
        return self.image


@cache
def _agent_bundle_file() -> tuple[Path, str]:
    """The agent zipapp, built once per process into a directory removed at exit (the asset
    is copied into cdk.out at synth); its SHA-256 goes into the user data."""
    bundle = agent_bundle.build_agent_bundle()
    work = Path(tempfile.mkdtemp(prefix="enclavekit-agent-"))
    atexit.register(shutil.rmtree, work, True)
    return bundle.write(work / agent_bundle.BUNDLE_NAME), bundle.sha256


def _first_subnet_type(vpc: ec2.IVpc) -> ec2.SubnetType:
    """Prefer private subnets; an enclave host needs no public address."""
    if vpc.isolated_subnets:
        return ec2.SubnetType.PRIVATE_ISOLATED
    if vpc.private_subnets:
        return ec2.SubnetType.PRIVATE_WITH_EGRESS
    return ec2.SubnetType.PUBLIC


def _key_logical_id(key: Any) -> str:
    """The logical id of a key's AWS::KMS::Key (through AttestedKey -> kms.Key -> CfnKey)."""
    node = key
    while node is not None and not isinstance(node, CfnElement):
        node = node.node.default_child
    if node is None:
        raise InvalidInput(f"key must be a kms.Key or AttestedKey defined in this app, got {key!r}")
    return node.logical_id
