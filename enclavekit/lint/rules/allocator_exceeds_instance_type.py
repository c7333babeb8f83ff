"""EK-UD-003: the allocator pool the user data writes does not fit the instance type."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit import instance_types
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        itype = h.host.instance_type
        if itype is None or itype.lower() not in instance_types.TYPES:
            continue
        cpus, mem, written = h.ud.allocator(h.where)
        if not written or cpus is None or mem is None:
            continue
        problems = instance_types.allocator_problems(itype, cpus, mem)
        if problems:
            yield RULE.finding(
                h.location,
                f"allocator.yaml of enclave host {h.name} ({cpus} CPUs, "
                f"{mem} MiB) does not fit {itype}: {'; '.join(problems)}",
            )


RULE = Rule(
    id="EK-UD-003",
    severity=Severity.ERROR,
    title="Allocator pool does not fit the instance type",
    explanation="The allocator takes whole cores other than CPU 0's (an even count on SMT "
    "types) and hugepage memory the parent can spare; a pool the type cannot give makes "
    "nitro-enclaves-allocator.service fail at boot, and no enclave starts.",
    fix="Size memory_mib and cpu_count in allocator.yaml for the instance type (leave CPU 0's "
    "core and about 1 GiB to the parent), or pick a larger type.",
    check=check,
)
