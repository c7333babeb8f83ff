"""EK-ACM-001: the ACM association's role lacks one of its three grants."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.resolve import ACCOUNT, PARTITION, REGION
from enclavekit.lint.world import World
from enclavekit.policy import evaluate


def check(world: World) -> Iterator[Finding]:
    for assoc in world.associations:
        role = assoc.role
        if role is None:
            continue  # a role from outside these templates cannot be judged here
        docs = [d.policy for d in role.policies]
        needed = (
            ("s3:GetObject", f"arn:{PARTITION}:s3:::{assoc.bucket}/{role.arn}/certificate"),
            ("kms:Decrypt", f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{assoc.kms_key_id}"),
            ("iam:GetRole", role.arn),
        )
        missing = [
            f"{action} on {what}"
            for (action, resource), what in zip(
                needed,
                (
                    "the association's CertificateS3BucketName",
                    "its EncryptionKmsKeyId",
                    "the role itself",
                ),
                strict=True,
            )
            if not evaluate(world.unattested(role.arn, action, resource), docs).allowed
        ]
        if missing:
            yield RULE.finding(
                world.at(assoc),
                f"ACM association {assoc.resource.logical_id}: role {role.resource.logical_id} "
                f"lacks {'; '.join(missing)}",
            )


RULE = Rule(
    id="EK-ACM-001",
    severity=Severity.ERROR,
    title="ACM association role lacks a required grant",
    explanation="The ACM for Nitro Enclaves agent downloads the certificate bundle from the "
    "association's S3 bucket, decrypts its private key with the association's KMS key from the "
    "enclave, and resolves its own role with iam:GetRole; without any one of them no "
    "certificate reaches nginx.",
    fix="Grant s3:GetObject on arn:aws:s3:::<CertificateS3BucketName>/*, kms:Decrypt on "
    "arn:aws:kms:<region>:*:key/<EncryptionKmsKeyId> and iam:GetRole on the role "
    "(the EnclaveCertificate construct does this).",
    check=check,
)
