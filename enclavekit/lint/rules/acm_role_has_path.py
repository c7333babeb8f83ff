"""EK-ACM-002: the ACM association's role has a path, which the agent mis-resolves."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for assoc in world.associations:
        if assoc.role is not None and assoc.role.path not in ("/", ""):
            yield RULE.finding(
                world.at(assoc.role, "/Properties/Path"),
                f"role {assoc.role.resource.logical_id} of ACM association "
                f"{assoc.resource.logical_id} has path {assoc.role.path}",
            )


RULE = Rule(
    id="EK-ACM-002",
    severity=Severity.WARNING,
    title="ACM association role has a path",
    explanation="The ACM for Nitro Enclaves agent rebuilds its role ARN from the instance "
    "profile when iam:GetRole or the InstanceRoleArn tag is unavailable, dropping the path, "
    "and then looks for the certificate under the wrong S3 key (aws-nitro-enclaves-acm#15).",
    fix='Create the association\'s role without a Path ("/").',
    check=check,
)
