"""EK-HOST-003: hibernation together with Nitro Enclaves."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        if host.enclave_enabled and host.hibernation:
            yield RULE.finding(
                world.at(host),
                f"enclave host {host.resource.logical_id} enables both Nitro Enclaves and "
                "hibernation",
            )


RULE = Rule(
    id="EK-HOST-003",
    severity=Severity.ERROR,
    title="Hibernation enabled on an enclave host",
    explanation="EC2 refuses to launch an instance with both Nitro Enclaves and hibernation "
    "(RunInstances documentation).",
    fix="Remove HibernationOptions (CDK: hibernation_enabled) from the enclave host.",
    check=check,
)
