"""EK-HOST-004: IMDSv1 allowed on an enclave host."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        if host.http_tokens != "required":
            found = host.http_tokens or "not set (IMDSv1 allowed by default)"
            yield RULE.finding(
                world.at(host),
                f"enclave host {host.resource.logical_id} allows IMDSv1: HttpTokens is {found}",
            )


RULE = Rule(
    id="EK-HOST-004",
    severity=Severity.ERROR,
    title="IMDSv1 allowed on an enclave host",
    explanation="The parent's role credentials are what the enclave uses to call KMS; IMDSv1 "
    "lets any SSRF on the parent steal them. The ACM for Nitro Enclaves agent uses IMDSv2.",
    fix="Require IMDSv2: MetadataOptions.HttpTokens = required (CDK: require_imdsv2=True).",
    check=check,
)
