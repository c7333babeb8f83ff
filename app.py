#!/usr/bin/env python3
"""The sample app: HTTPS whose TLS key lives only in an enclave, and an application secret
that only an attested enclave image can open — the two set-ups that work on AWS.

One stack, an isolated VPC and two m5a.xlarge enclave hosts (one host holds one 2-vCPU enclave):
- `WebHost` (set-up A): nginx on the parent serves HTTPS with an ACM certificate whose private
  key is released only to ACM for Nitro Enclaves' own enclave (the `aws-nitro-enclaves-acm`
  agent boots it and provisions the key); nginx asks that enclave for every private-key
  operation over PKCS#11 on vsock. Context `web_host=false` leaves it out.
- `Host` (set-up B): the image built reproducibly from enclave_app/ (2 vCPUs, 512 MiB) and an
  application secret sealed under a KMS key that only an enclave attesting this image's
  PCR0/1/2 can use.
Every `cdk synth` runs the enclavekit linter.

Set-up C — the image also claiming an ACM for Nitro Enclaves certificate to terminate TLS
itself — is what AWS refuses: ACM releases the certificate's key only to ACM's own enclave
image. Context `certificate_in_image=true` deploys it anyway (the linter's EK-ACM-003
acknowledged) so the local run can show that refusal: the enclave ends degraded with
AccessDeniedException and verify fails its TLS checks, as the host would on AWS. HTTPS with the
key in an enclave is set-up A (nginx on the parent, the key in ACM's enclave): see
docs/real-aws.md.

Context (cdk.json defaults work locally): app_dir, stack_name, web_host, certificate_in_image,
domain, certificate_arn (an existing ACM certificate; default: a new
AWS::CertificateManager::Certificate for the domain).
"""

from __future__ import annotations

import os

import enclave_constructs as ek  # first: puts the project's Node.js 22 under jsii

# isort: split
import aws_cdk as cdk
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from enclave_constructs.lint import EnclaveLintPlugin, acknowledge

from constructs import Construct

DEFAULT_DOMAIN = "enclave.example.test"


class EnclaveServiceStack(cdk.Stack):
    """The seed scenario's resources; construct ids are the stack's API."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        domain: str,
        app_dir: str,
        certificate_arn: str | None = None,
        certificate_in_image: bool = False,
        web_host: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=1,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="enclave", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
                )
            ],
        )
        certificate: acm.ICertificate | str | None = None
        if web_host or certificate_in_image:
            certificate = certificate_arn or acm.Certificate(
                self, "Certificate", domain_name=domain
            )
        image = ek.EnclaveImage.from_directory(app_dir)
        host = ek.EnclaveHost(
            self,
            "Host",
            vpc=vpc,
            image=image,
            instance_type="m5a.xlarge",
            enclave_cpu_count=2,
            enclave_memory_mib=512,
            # set-up C, refused on AWS (see the module docstring), only when asked for
            certificate=certificate if certificate_in_image else None,
            domain=domain,
            service_port=443,
        )
        host.connections.allow_default_port_from(ec2.Peer.ipv4(vpc.vpc_cidr_block))
        if certificate_in_image:
            acknowledge(
                host.instance,
                "EK-ACM-003",
                "set-up C on purpose: shows locally the refusal AWS gives it",
            )
        cdk.Validations.of(host).acknowledge(
            cdk.Acknowledgment(
                id="CloudFormation-Validate::W9010",
                reason="the default AMI is a fixed id the local endpoint knows; pass "
                "machine_image with an Amazon Linux 2023 AMI for real AWS",
            )
        )
        key = ek.AttestedKey(
            self,
            "SecretKey",
            description="enclavekit sample: application secret, released to the attested image",
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        host.grant_attested_decrypt(key)
        secret = ek.EnclaveSecret(self, "AppSecret", host=host, key=key, name="app-secret")

        assert host.instance is not None
        cdk.CfnOutput(self, "InstanceId", value=host.instance.instance_id)
        cdk.CfnOutput(self, "RoleArn", value=host.role.role_arn)
        cdk.CfnOutput(self, "KeyArn", value=key.key_arn)
        cdk.CfnOutput(self, "SecretParameter", value=secret.parameter_name)
        cdk.CfnOutput(self, "ServicePort", value=str(host.service_port))
        cdk.CfnOutput(self, "Domain", value=domain)
        cdk.CfnOutput(self, "ImagePcr0", value=image.measurements.hex(0))
        if web_host:
            assert certificate is not None
            self._web_host(vpc, certificate, domain)

    def _web_host(self, vpc: ec2.IVpc, certificate: acm.ICertificate | str, domain: str) -> None:
        """Set-up A: no image of ours; ACM's enclave holds the key, nginx on the parent uses it."""
        web = ek.EnclaveHost(
            self,
            "WebHost",
            vpc=vpc,
            instance_type="m5a.xlarge",
            enclave_cpu_count=2,
            enclave_memory_mib=512,
            certificate=certificate,
            domain=domain,
            service_port=443,
        )
        web.connections.allow_default_port_from(ec2.Peer.ipv4(vpc.vpc_cidr_block))
        cdk.Validations.of(web).acknowledge(
            cdk.Acknowledgment(
                id="CloudFormation-Validate::W9010",
                reason="the default AMI is a fixed id the local endpoint knows; pass "
                "machine_image with an Amazon Linux 2023 AMI for real AWS",
            )
        )
        assert web.instance is not None
        cdk.CfnOutput(self, "WebInstanceId", value=web.instance.instance_id)
        cdk.CfnOutput(self, "WebRoleArn", value=web.role.role_arn)


def _flag(value: object, *, default: bool) -> bool:
    """A boolean context value: JSON true/false (cdk.json) or "true"/"false" (`-c k=v`)."""
    if value is None:
        return default
    return str(value).lower() in ("true", "1")


def main() -> None:
    app = cdk.App()
    cdk.Validations.of(app).add_plugins(EnclaveLintPlugin())
    ctx = app.node.try_get_context
    EnclaveServiceStack(
        app,
        ctx("stack_name") or "EnclaveService",
        domain=ctx("domain") or DEFAULT_DOMAIN,
        certificate_arn=ctx("certificate_arn") or None,
        certificate_in_image=_flag(ctx("certificate_in_image"), default=False),
        web_host=_flag(ctx("web_host"), default=True),
        app_dir=ctx("app_dir") or "enclave_app",
        env=cdk.Environment(
            account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
            region=os.environ.get("CDK_DEFAULT_REGION"),
        ),
    )
    app.synth()


if __name__ == "__main__":
    main()
