"""EC2 instance types: size, architecture and whether they can be Nitro Enclaves parents.

Why a table and not DescribeInstanceTypes at run time: synth and lint must answer offline and
the same way every time. The table is data (`enclavekit/data/instance_types.json`): every
current EC2 type with its vCPUs, memory, threads per core, architecture and AWS's own
`NitroEnclavesSupport` flag, with its source and the date it was read. The user guide's rules
(a virtualized Nitro parent, Intel/AMD with >= 4 vCPUs, Graviton with >= 2, no burstable
T-series, no bare metal, no hibernation together with enclaves) explain each refusal. The
allocator rules (docs/reference kms-acm-cloudformation.md §5.2) live here too, so the
constructs and the linter judge an enclave size against a type with the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from enclavekit.errors import InvalidInput

X86_64 = "x86_64"
ARM64 = "arm64"

# The kernel driver's floor for one enclave (NE_MIN_ENCLAVE_MEM_SIZE) and its region size.
MIN_ENCLAVE_MEMORY_MIB = 64
ENCLAVE_MEMORY_STEP_MIB = 2
# What the parent keeps for its OS, nitro-cli, the ACM agent and the web server.
MIN_PARENT_MEMORY_MIB = 1024


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type as far as enclaves care."""

    name: str
    family: str
    size: str
    vcpus: int
    memory_mib: int
    architecture: str  # "x86_64" | "arm64"
    threads_per_core: int  # 2 on SMT x86 types, 1 on Graviton and some AMD types
    burstable: bool
    metal: bool
    hibernation: bool  # hibernation supported by the type (never together with enclaves)
    nitro_enclaves: bool = True  # DescribeInstanceTypes NitroEnclavesSupport == "supported"

    @property
    def smt(self) -> bool:
        """Whether a core carries two hardware threads (vCPUs must then go in pairs)."""
        return self.threads_per_core > 1

    @property
    def enclave_capable(self) -> bool:
        return _reason(self) is None


def _load() -> tuple[dict[str, InstanceType], dict[str, Any]]:
    raw = json.loads(
        resources.files("enclavekit").joinpath("data/instance_types.json").read_text("utf-8")
    )
    types: dict[str, InstanceType] = {}
    for name, (vcpus, mem, tpc, arch, flags) in raw["types"].items():
        family, size = name.split(".", 1)
        types[name] = InstanceType(
            name=name,
            family=family,
            size=size,
            vcpus=vcpus,
            memory_mib=mem,
            architecture=arch,
            threads_per_core=tpc,
            burstable="b" in flags,
            metal="m" in flags,
            hibernation="h" in flags,
            nitro_enclaves="e" in flags,
        )
    return types, {k: v for k, v in raw.items() if k != "types"}


TYPES, SOURCE = _load()
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.family for t in TYPES.values()))


def family_of(name: str) -> str:
    """ "m7a.xlarge" -> "m7a" (lower case, whatever follows the first dot dropped)."""
    return name.strip().lower().split(".", 1)[0]


def known_family(name: str) -> bool:
    """Whether the table knows the family of `name` (its size may still be unknown)."""
    return family_of(name) in FAMILIES


def _examples() -> str:
    capable = [n for n in ("m5a.xlarge", "m6i.xlarge", "c6a.2xlarge", "c6g.large") if n in TYPES]
    return ", ".join(capable)


def lookup(name: str) -> InstanceType:
    """The table entry for `name` (e.g. "m5a.xlarge"); InvalidInput naming it otherwise."""
    key = name.strip().lower() if isinstance(name, str) else name
    found = TYPES.get(key) if isinstance(key, str) else None
    if found is None:
        family = key.split(".", 1)[0] if isinstance(key, str) else ""
        hint = (
            f"sizes of {family}: {', '.join(t.size for t in TYPES.values() if t.family == family)}"
            if family in FAMILIES
            else f"family {family!r} is not among the {len(FAMILIES)} families of enclavekit's "
            f"table, read from AWS on {SOURCE.get('read')}"
        )
        raise InvalidInput(
            f"instance type must be a known EC2 type such as {_examples()}, got {name!r} ({hint})"
        )
    return found


def _reason(t: InstanceType) -> str | None:
    """Why AWS refuses `t` as a parent (its NitroEnclavesSupport flag), in the guide's terms."""
    if t.nitro_enclaves:
        return None
    if t.burstable:
        return f"{t.name} is a burstable T-series type, which cannot run Nitro Enclaves"
    if t.metal:
        return f"{t.name} is bare metal; enclave parents must be virtualized Nitro instances"
    need = 4 if t.architecture == X86_64 else 2
    if t.vcpus < need and t.vcpus // t.threads_per_core < 2:
        kind = "Intel/AMD" if t.architecture == X86_64 else "Graviton"
        return f"{t.name} has {t.vcpus} vCPUs; {kind} enclave parents need at least {need} vCPUs"
    return f"{t.name} is listed by AWS as not supporting Nitro Enclaves"


def why_not(name: str | InstanceType) -> str | None:
    """Why `name` cannot be an enclave parent, or None when it can."""
    return _reason(name if isinstance(name, InstanceType) else lookup(name))


def enclave_capable(name: str | InstanceType) -> bool:
    """Whether `name` can be a Nitro Enclaves parent instance."""
    return why_not(name) is None


def enclave_capable_types() -> list[str]:
    """Every enclave-capable type in the table, in table order."""
    return [n for n, t in TYPES.items() if _reason(t) is None]


def max_enclave_cpus(name: str | InstanceType) -> int:
    """The most vCPUs one enclave can take: everything but CPU 0's core."""
    t = name if isinstance(name, InstanceType) else lookup(name)
    return t.vcpus - t.threads_per_core


def max_enclave_memory_mib(name: str | InstanceType) -> int:
    """The most memory an enclave can take while the parent keeps MIN_PARENT_MEMORY_MIB."""
    t = name if isinstance(name, InstanceType) else lookup(name)
    return t.memory_mib - MIN_PARENT_MEMORY_MIB


def allocator_problems(name: str | InstanceType, cpu_count: int, memory_mib: int) -> list[str]:
    """What is wrong with an allocator of `cpu_count` vCPUs / `memory_mib` MiB on `name`.

    Empty when it fits. Rules (kernel driver, run-enclave docs): CPU 0 and its sibling stay
    with the parent; on SMT types the pool is whole cores (an even count); memory at least
    64 MiB in 2 MiB regions, leaving the parent MIN_PARENT_MEMORY_MIB.
    """
    t = name if isinstance(name, InstanceType) else lookup(name)
    problems: list[str] = []
    top = max_enclave_cpus(t)
    if isinstance(cpu_count, bool) or not isinstance(cpu_count, int) or cpu_count < 1:
        problems.append(f"enclave cpu count must be a whole number >= 1, got {cpu_count!r}")
    elif t.smt and cpu_count % 2:
        problems.append(
            f"enclave cpu count must be even on {t.name} (2 threads per core; the enclave gets "
            f"whole cores), got {cpu_count}; allowed: 2, 4, ... {top}"
        )
    elif cpu_count > top:
        problems.append(
            f"enclave cpu count must leave CPU 0's core ({t.threads_per_core} vCPU"
            f"{'s' if t.threads_per_core > 1 else ''}) to the parent: {t.name} has {t.vcpus} "
            f"vCPUs, so at most {top}, got {cpu_count}"
        )
    mem_top = max_enclave_memory_mib(t)
    if isinstance(memory_mib, bool) or not isinstance(memory_mib, int):
        problems.append(f"enclave memory must be a whole number of MiB, got {memory_mib!r}")
    elif memory_mib < MIN_ENCLAVE_MEMORY_MIB:
        problems.append(
            f"enclave memory must be at least {MIN_ENCLAVE_MEMORY_MIB} MiB, got {memory_mib}"
        )
    elif memory_mib % ENCLAVE_MEMORY_STEP_MIB:
        problems.append(
            f"enclave memory must be a multiple of {ENCLAVE_MEMORY_STEP_MIB} MiB "
            f"(hugepage regions), got {memory_mib}"
        )
    elif memory_mib > mem_top:
        problems.append(
            f"enclave memory must leave the parent {MIN_PARENT_MEMORY_MIB} MiB: {t.name} has "
            f"{t.memory_mib} MiB, so at most {mem_top} MiB, got {memory_mib}"
        )
    return problems
