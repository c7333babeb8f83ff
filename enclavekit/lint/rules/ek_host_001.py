"""EK-HOST-001: the enclave host's instance type cannot run Nitro Enclaves."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit import instance_types
from enclavekit.errors import InvalidInput
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        itype = host.instance_type
        if itype is None or "{{" in itype:
            continue  # not set here or not knowable from the template
        try:
            reason = instance_types.why_not(itype)
        except InvalidInput as exc:
            reason = str(exc)
        if reason:
            yield RULE.finding(
                world.location(host.template, host.resource, "/Properties/InstanceType"),
                f"enclave host {host.resource.logical_id} uses {itype}: {reason}",
            )


RULE = Rule(
    id="EK-HOST-001",
    severity=Severity.ERROR,
    title="Enclave host instance type is not enclave-capable",
    explanation="Nitro Enclaves need a virtualized Nitro parent with at least 4 vCPUs "
    "(Intel/AMD) or 2 vCPUs (Graviton); T-series, metal and small sizes fail at launch.",
    fix="Pick an enclave-capable type such as m5a.xlarge, m6i.xlarge or c6g.large.",
    check=check,
)
