"""EK-UD-007: the ACM certificate association is made by the user data, not the template."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        if h.ud.associate_calls:
            yield RULE.finding(
                h.location,
                f"user data of enclave host {h.name} associates a certificate "
                "itself (aws ec2 associate-enclave-certificate-iam-role) instead of an "
                "AWS::EC2::EnclaveCertificateIamRoleAssociation resource",
            )


RULE = Rule(
    id="EK-UD-007",
    severity=Severity.WARNING,
    title="Certificate association made in user data",
    explanation="Associating at boot needs ec2:AssociateEnclaveCertificateIamRole on the "
    "parent's own role (the parent can then bind any certificate it names to any role it can "
    "pass), the association outlives the stack, and its grants cannot be checked here.",
    fix="Declare AWS::EC2::EnclaveCertificateIamRoleAssociation in the template (the "
    "EnclaveCertificate construct does it with its three grants) and drop the call.",
    check=check,
)
