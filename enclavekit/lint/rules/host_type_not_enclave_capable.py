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
        where = world.at(host, "/Properties/InstanceType")
        if not instance_types.known_family(itype):
            # newer than the table, or a typo: say so, but do not fail the run on it
            yield RULE.finding(
                where,
                f"enclave host {host.resource.logical_id} uses {itype}, whose family "
                f"{instance_types.family_of(itype)!r} enclavekit does not know (table read "
                f"{instance_types.SOURCE.get('read')}); check that AWS lists it as supporting "
                "Nitro Enclaves",
                Severity.WARNING,
            )
            continue
        try:
            reason = instance_types.why_not(itype)
        except InvalidInput as exc:
            reason = str(exc)
        if reason:
            yield RULE.finding(
                where, f"enclave host {host.resource.logical_id} uses {itype}: {reason}"
            )


RULE = Rule(
    id="EK-HOST-001",
    severity=Severity.ERROR,
    title="Enclave host instance type is not enclave-capable",
    explanation="Nitro Enclaves need a virtualized Nitro parent that AWS lists as supporting "
    "them (DescribeInstanceTypes NitroEnclavesSupport): at least 4 vCPUs on SMT Intel/AMD, 2 "
    "on Graviton; T-series, metal and small sizes fail at launch. A family enclavekit's table "
    "does not know is a warning, not an error.",
    fix="Pick an enclave-capable type such as m5a.xlarge, m6i.xlarge or c6g.large.",
    check=check,
)
