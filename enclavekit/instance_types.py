"""EC2 instance types: size, architecture and whether they can be Nitro Enclaves parents.

Why a table and not DescribeInstanceTypes: synth and lint must answer offline and the same way
every time. The rules come from the Nitro Enclaves user guide (docs/reference
kms-acm-cloudformation.md §5): a virtualized Nitro parent, Intel/AMD with >= 4 vCPUs, Graviton
with >= 2 vCPUs, no burstable T-series, no bare metal, no hibernation together with enclaves,
and a few sizes AWS lists as unsupported. The allocator rules (§5.2) live here too, so the
constructs and the linter judge an enclave size against a type with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from enclavekit.errors import InvalidInput

X86_64 = "x86_64"
ARM64 = "arm64"

# The kernel driver's floor for one enclave (NE_MIN_ENCLAVE_MEM_SIZE) and its region size.
MIN_ENCLAVE_MEMORY_MIB = 64
ENCLAVE_MEMORY_STEP_MIB = 2
# What the parent keeps for its OS, nitro-cli, the ACM agent and the web server.
MIN_PARENT_MEMORY_MIB = 1024
# AWS hibernation prerequisite: instance RAM below 150 GiB.
_HIBERNATION_MAX_MEMORY_MIB = 150 * 1024

# Sizes AWS lists as not supported as enclave parents although their family is.
_EXCLUDED_SIZES = frozenset({"c7i.24xlarge", "c7i.48xlarge", "m7i.24xlarge", "m7i.48xlarge"})


@dataclass(frozen=True)
class InstanceType:
    """One EC2 instance type as far as enclaves care."""

    name: str
    family: str
    size: str
    vcpus: int
    memory_mib: int
    architecture: str  # "x86_64" | "arm64"
    threads_per_core: int  # 2 on SMT x86 types, 1 on Graviton
    burstable: bool
    metal: bool
    hibernation: bool  # hibernation supported by the type (never together with enclaves)

    @property
    def smt(self) -> bool:
        """Whether a core carries two hardware threads (vCPUs must then go in pairs)."""
        return self.threads_per_core > 1

    @property
    def enclave_capable(self) -> bool:
        return _reason(self) is None


@dataclass(frozen=True)
class _Family:
    name: str
    architecture: str
    mib_per_vcpu: int
    sizes: tuple[str, ...]
    metal: tuple[tuple[str, int], ...] = ()  # (size name, vCPUs) of the bare-metal sizes
    burstable: bool = False
    hibernation: bool = False


# vCPUs of each size name; families that differ (c5) override below.
_SIZE_VCPUS = {
    "nano": 2,
    "micro": 2,
    "small": 2,
    "medium": 1,
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}
_T_MEMORY_MIB = {
    "nano": 512,
    "micro": 1024,
    "small": 2048,
    "medium": 4096,
    "large": 8192,
    "xlarge": 16384,
    "2xlarge": 32768,
}
_T_SIZES = ("nano", "micro", "small", "medium", "large", "xlarge", "2xlarge")
_A_SIZES = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
_C5_SIZES = ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge")
_I6_SIZES = (*_A_SIZES, "32xlarge")
_A6_SIZES = (*_I6_SIZES, "48xlarge")
_G_SIZES = ("medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")

_FAMILIES = (
    # Intel / AMD, general purpose: 4 GiB per vCPU
    _Family("m5", X86_64, 4096, _A_SIZES, (("metal", 96),), hibernation=True),
    _Family("m5a", X86_64, 4096, _A_SIZES, hibernation=True),
    _Family("m5n", X86_64, 4096, _A_SIZES, (("metal", 96),)),
    _Family("m6i", X86_64, 4096, _I6_SIZES, (("metal", 128),), hibernation=True),
    _Family("m6a", X86_64, 4096, _A6_SIZES, (("metal", 192),)),
    _Family(
        "m7i", X86_64, 4096, _A6_SIZES, (("metal-24xl", 96), ("metal-48xl", 192)), hibernation=True
    ),
    # compute optimised: 2 GiB per vCPU
    _Family("c5", X86_64, 2048, _C5_SIZES, (("metal", 96),), hibernation=True),
    _Family("c5a", X86_64, 2048, _A_SIZES),
    _Family("c6i", X86_64, 2048, _I6_SIZES, (("metal", 128),), hibernation=True),
    _Family("c6a", X86_64, 2048, _A6_SIZES, (("metal", 192),)),
    _Family(
        "c7i", X86_64, 2048, _A6_SIZES, (("metal-24xl", 96), ("metal-48xl", 192)), hibernation=True
    ),
    # memory optimised: 8 GiB per vCPU
    _Family("r5", X86_64, 8192, _A_SIZES, (("metal", 96),), hibernation=True),
    _Family("r5a", X86_64, 8192, _A_SIZES, hibernation=True),
    _Family("r6i", X86_64, 8192, _I6_SIZES, (("metal", 128),), hibernation=True),
    # Graviton (one thread per core)
    _Family("m6g", ARM64, 4096, _G_SIZES, (("metal", 64),), hibernation=True),
    _Family("c6g", ARM64, 2048, _G_SIZES, (("metal", 64),), hibernation=True),
    _Family("r6g", ARM64, 8192, _G_SIZES, (("metal", 64),), hibernation=True),
    _Family("m7g", ARM64, 4096, _G_SIZES, (("metal", 64),)),
    _Family("c7g", ARM64, 2048, _G_SIZES, (("metal", 64),)),
    # burstable
    _Family("t3", X86_64, 0, _T_SIZES, burstable=True, hibernation=True),
    _Family("t3a", X86_64, 0, _T_SIZES, burstable=True, hibernation=True),
    _Family("t4g", ARM64, 0, _T_SIZES, burstable=True, hibernation=True),
)


def _expand(fam: _Family) -> list[InstanceType]:
    tpc = 2 if fam.architecture == X86_64 else 1
    out: list[InstanceType] = []
    for size in fam.sizes:
        vcpus = _SIZE_VCPUS[size]
        mem = _T_MEMORY_MIB[size] if fam.burstable else vcpus * fam.mib_per_vcpu
        out.append(
            InstanceType(
                name=f"{fam.name}.{size}",
                family=fam.name,
                size=size,
                vcpus=vcpus,
                memory_mib=mem,
                architecture=fam.architecture,
                threads_per_core=tpc,
                burstable=fam.burstable,
                metal=False,
                hibernation=fam.hibernation and mem < _HIBERNATION_MAX_MEMORY_MIB,
            )
        )
    for size, vcpus in fam.metal:
        out.append(
            InstanceType(
                name=f"{fam.name}.{size}",
                family=fam.name,
                size=size,
                vcpus=vcpus,
                memory_mib=vcpus * fam.mib_per_vcpu,
                architecture=fam.architecture,
                threads_per_core=tpc,
                burstable=False,
                metal=True,
                hibernation=False,
            )
        )
    return out


TYPES: dict[str, InstanceType] = {t.name: t for f in _FAMILIES for t in _expand(f)}
FAMILIES: tuple[str, ...] = tuple(f.name for f in _FAMILIES)


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
            else f"known families: {', '.join(FAMILIES)}"
        )
        raise InvalidInput(
            f"instance type must be a known EC2 type such as {_examples()}, got {name!r} ({hint})"
        )
    return found


def _reason(t: InstanceType) -> str | None:
    if t.burstable:
        return f"{t.name} is a burstable T-series type, which cannot run Nitro Enclaves"
    if t.metal:
        return f"{t.name} is bare metal; enclave parents must be virtualized Nitro instances"
    if t.name in _EXCLUDED_SIZES:
        return f"{t.name} is listed by AWS as not supporting Nitro Enclaves"
    need = 4 if t.architecture == X86_64 else 2
    if t.vcpus < need:
        kind = "Intel/AMD" if t.architecture == X86_64 else "Graviton"
        return f"{t.name} has {t.vcpus} vCPUs; {kind} enclave parents need at least {need} vCPUs"
    return None


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
