"""EK-UD-002: an enclave asks for more CPUs or memory than the allocator reserves."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.userdata import ACM_CONFIG, as_int
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        ud = h.ud
        cpus, mem, written = ud.allocator(h.where)
        pool = "allocator.yaml" if written else "the default allocator.yaml (2 CPUs, 512 MiB)"
        asks: list[tuple[str, int | None, int | None]] = [
            (r.eif_path or "run-enclave", r.cpu_count, r.memory_mib) for r in ud.run_enclaves
        ]
        acm = ud.yaml_file(ACM_CONFIG, h.where)
        enclave = acm.get("enclave") if acm else None
        if isinstance(enclave, dict):
            asks.append(
                (
                    "the ACM enclave (acm.yaml)",
                    as_int(enclave.get("cpu_count")),
                    as_int(enclave.get("memory_mib")),
                )
            )
        for what, want_cpus, want_mem in asks:
            problems = []
            if want_cpus is not None and cpus is not None and want_cpus > cpus:
                problems.append(f"{want_cpus} CPUs of a pool of {cpus}")
            if want_mem is not None and mem is not None and want_mem > mem:
                problems.append(f"{want_mem} MiB of a pool of {mem} MiB")
            if problems:
                yield RULE.finding(
                    h.location,
                    f"enclave host {h.name}: {what} asks for "
                    f"{' and '.join(problems)} reserved by {pool}; nitro-cli refuses to start it",
                )


RULE = Rule(
    id="EK-UD-002",
    severity=Severity.ERROR,
    title="Enclave asks for more than the allocator reserves",
    explanation="An enclave's CPUs and memory come only from the pool the "
    "nitro-enclaves-allocator service reserves at boot (/etc/nitro_enclaves/allocator.yaml; "
    "2 CPUs and 512 MiB when the user data leaves it alone); run-enclave (or the ACM agent) "
    "asking for more fails at boot, after the deploy reported success.",
    fix="Raise memory_mib / cpu_count in allocator.yaml (written by the user data) to cover "
    "every enclave the host runs, or ask for less.",
    check=check,
)
