"""EC2 wire handlers: EnclaveOptions on RunInstances / DescribeInstanceAttribute, and the three
ACM-for-Nitro-Enclaves actions (request/response shapes of the EC2 API reference)."""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses import EC2Response
from moto.ec2.responses.general import General
from moto.ec2.responses.instances import InstanceResponse

from . import certificates, hooks, instances

_original_run_instances = InstanceResponse.run_instances
_original_start_instances = InstanceResponse.start_instances
_original_describe_attribute = InstanceResponse.describe_instance_attribute
_original_console_output = General.get_console_output


def get_console_output(self: General) -> ActionResult:
    """GetConsoleOutput: an instance host's console (cloud-init and its user data), base64."""
    from moto.core.utils import utcnow

    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    output = hooks.console_output(instance.id)
    if output is None:
        return _original_console_output(self)
    from moto.ec2.utils import Base64EncodedString

    return ActionResult(
        {"InstanceId": instance.id, "Timestamp": utcnow(), "Output": Base64EncodedString(output)}
    )


def run_instances(self: InstanceResponse) -> ActionResult:
    """RunInstances, keeping EnclaveOptions and starting enclave instances' parents."""
    requested = self._get_param("EnclaveOptions")
    original_backend_run = self.ec2_backend.run_instances

    def run(*args: Any, **kwargs: Any) -> Any:
        if requested:
            kwargs["enclave_options"] = requested
        return original_backend_run(*args, **kwargs)

    self.ec2_backend.run_instances = run
    try:
        result = _original_run_instances(self)
    finally:
        del self.ec2_backend.run_instances
    reservation: Any = result.result
    try:
        for instance in reservation.instances:
            instances.start_api_instance(instance)
    except Exception:
        for instance in reservation.instances:
            instance.terminate()
        raise
    return result


def describe_instance_attribute(self: InstanceResponse) -> ActionResult:
    if self._get_param("Attribute") != "enclaveOptions":
        return _original_describe_attribute(self)
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    return ActionResult(
        {"InstanceId": instance.id, "EnclaveOptions": dict(instance.enclave_options)}
    )


def _dry_run(self: EC2Response, action: str) -> None:
    if self._get_bool_param("DryRun", False):
        raise EC2ClientError(
            "DryRunOperation", f"Request would have succeeded, but DryRun flag is set ({action})."
        )


def _certificate_and_role(self: EC2Response, action: str) -> tuple[str, str, str, str]:
    """(account, region, CertificateArn, RoleArn) of an association request."""
    _dry_run(self, action)
    return (
        self.current_account,
        self.region,
        self._get_param("CertificateArn"),
        self._get_param("RoleArn"),
    )


def associate_enclave_certificate_iam_role(self: EC2Response) -> ActionResult:
    assoc = certificates.associate(
        *_certificate_and_role(self, "AssociateEnclaveCertificateIamRole")
    )
    return ActionResult(
        {
            "CertificateS3BucketName": assoc.bucket,
            "CertificateS3ObjectKey": assoc.object_key,
            "EncryptionKmsKeyId": assoc.kms_key_id,
        }
    )


def get_associated_enclave_certificate_iam_roles(self: EC2Response) -> ActionResult:
    _dry_run(self, "GetAssociatedEnclaveCertificateIamRoles")
    found = certificates.associated_roles(
        self.current_account, self.region, self._get_param("CertificateArn")
    )
    return ActionResult({"AssociatedRoles": [a.to_api() for a in found]})


def disassociate_enclave_certificate_iam_role(self: EC2Response) -> ActionResult:
    ok = certificates.disassociate(
        *_certificate_and_role(self, "DisassociateEnclaveCertificateIamRole")
    )
    return ActionResult({"Return": ok})


def install() -> None:
    """Add/replace the handlers on moto's EC2Response (idempotent)."""
    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]
    InstanceResponse.describe_instance_attribute = describe_instance_attribute  # type: ignore[method-assign]
    General.get_console_output = get_console_output  # type: ignore[method-assign]
    EC2Response.associate_enclave_certificate_iam_role = associate_enclave_certificate_iam_role  # type: ignore[attr-defined]
    EC2Response.get_associated_enclave_certificate_iam_roles = (  # type: ignore[attr-defined]
        get_associated_enclave_certificate_iam_roles
    )
    EC2Response.disassociate_enclave_certificate_iam_role = (  # type: ignore[attr-defined]
        disassociate_enclave_certificate_iam_role
    )
