"""`AWS::EC2::EnclaveCertificateIamRoleAssociation`: the CloudFormation face of one
certificate association (certificates.py), with its three GetAtt attributes. Changing the
certificate or the role replaces it (the new association first, then the old one goes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moto.core.common_models import CloudFormationModel

from ..cfn_resource import CfnCall, CfnResource
from . import certificates
from .certificates import CertificateAssociation


@dataclass(eq=False)
class EnclaveCertificateIamRoleAssociation(CfnResource, CloudFormationModel):
    """One association as a stack resource."""

    CFN_TYPE = "AWS::EC2::EnclaveCertificateIamRoleAssociation"
    # GetAtt name -> the association's field
    ATTRIBUTES = {
        "CertificateS3BucketName": "bucket",
        "CertificateS3ObjectKey": "object_key",
        "EncryptionKmsKeyId": "kms_key_id",
    }
    CFN_ATTRIBUTES = frozenset(ATTRIBUTES)

    account_id: str
    region: str
    association: CertificateAssociation

    @property
    def physical_resource_id(self) -> str:
        # Ref is not documented by AWS; the certificate|role pair identifies the association.
        return f"{self.association.certificate_arn}|{self.association.role_arn}"

    def get_cfn_attribute(self, attribute_name: str) -> str:
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        if attribute_name not in self.ATTRIBUTES:
            raise UnformattedGetAttTemplateException()
        return getattr(self.association, self.ATTRIBUTES[attribute_name])

    @classmethod
    def cfn_create(cls, call: CfnCall) -> EnclaveCertificateIamRoleAssociation:
        props: dict[str, Any] = call.props
        assoc = certificates.associate(
            call.account_id, call.region, props.get("CertificateArn"), props.get("RoleArn")
        )
        return cls(call.account_id, call.region, assoc)

    @classmethod
    def cfn_update(
        cls, old: EnclaveCertificateIamRoleAssociation, call: CfnCall
    ) -> EnclaveCertificateIamRoleAssociation:
        a = old.association
        if (call.props.get("CertificateArn"), call.props.get("RoleArn")) == (
            a.certificate_arn,
            a.role_arn,
        ):
            return old
        return super().cfn_update(old, call)

    def delete(self, account_id: str, region_name: str) -> None:
        a = self.association
        if certificates.is_associated(self.account_id, self.region, a.certificate_arn, a.role_arn):
            certificates.disassociate(self.account_id, self.region, a.certificate_arn, a.role_arn)
