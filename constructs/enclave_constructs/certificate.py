"""EnclaveCertificate: ACM for Nitro Enclaves' association of a certificate with a role.

EC2 answers the association with an S3 object (the certificate bundle, private key encrypted
under an AWS managed KMS key) and that key's id; the role can use neither until it is granted
s3:GetObject on the bucket, kms:Decrypt on the key and iam:GetRole on itself (the ACM agent
resolves its own role ARN). All three are wired here from the association's attributes.
"""

from __future__ import annotations

import re

from aws_cdk import Aws, Stack, Token
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam

from constructs import Construct
from enclavekit.errors import InvalidInput

_CERT_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$")


class EnclaveCertificate(Construct):
    """`AWS::EC2::EnclaveCertificateIamRoleAssociation` plus the three grants it needs."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        certificate: acm.ICertificate | str,
        role: iam.IRole,
    ) -> None:
        """Associate `certificate` (an ACM certificate or its ARN) with `role` (no path)."""
        super().__init__(scope, id)
        if isinstance(certificate, str):
            arn = certificate
            if not Token.is_unresolved(arn) and not _CERT_ARN.match(arn):
                raise InvalidInput(
                    "certificate must be an ACM certificate or its ARN like "
                    f"'arn:aws:acm:us-east-1:123456789012:certificate/<id>', got {certificate!r}"
                )
        elif hasattr(certificate, "certificate_arn"):
            arn = certificate.certificate_arn
        else:
            raise InvalidInput(
                f"certificate must be an acm.ICertificate or a certificate ARN, got {certificate!r}"
            )
        if isinstance(role, iam.Role):
            path = Stack.of(self).resolve(role.node.default_child.path)  # type: ignore[union-attr]
            if path not in (None, "/"):
                raise InvalidInput(
                    "role must have no path (the ACM agent rebuilds the role ARN from the "
                    f"instance profile and gets a role with a path wrong), got path {path!r}"
                )
        self.certificate_arn = arn
        self.role = role
        self.association = ec2.CfnEnclaveCertificateIamRoleAssociation(
            self, "Resource", certificate_arn=arn, role_arn=role.role_arn
        )
        self.bucket_name = self.association.attr_certificate_s3_bucket_name
        self.object_key = self.association.attr_certificate_s3_object_key
        self.encryption_kms_key_id = self.association.attr_encryption_kms_key_id
        partition, region = Aws.PARTITION, Aws.REGION
        self.grant_s3 = self._grant(
            role, "s3:GetObject", f"arn:{partition}:s3:::{self.bucket_name}/*"
        )
        self.grant_kms = self._grant(
            role, "kms:Decrypt", f"arn:{partition}:kms:{region}:*:key/{self.encryption_kms_key_id}"
        )
        self.grant_get_role = self._grant(role, "iam:GetRole", role.role_arn)
        self.grants = self.grant_s3.combine(self.grant_kms).combine(self.grant_get_role)

    @staticmethod
    def _grant(role: iam.IRole, action: str, resource: str) -> iam.Grant:
        return iam.Grant.add_to_principal(grantee=role, actions=[action], resource_arns=[resource])
