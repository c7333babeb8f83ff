"""EK-HOST-002: a resource declares an enclave but does not enable Nitro Enclaves."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        if host.metadata is not None and not host.enclave_enabled:
            yield RULE.finding(
                world.at(host),
                f"enclave host {host.resource.logical_id} declares an enclave in its "
                "enclavekit:host Metadata but EnclaveOptions.Enabled is not true",
            )


RULE = Rule(
    id="EK-HOST-002",
    severity=Severity.ERROR,
    title="Enclave host without EnclaveOptions",
    explanation="Without EnclaveOptions.Enabled the instance has no enclave support and "
    "nitro-cli run-enclave fails; the option cannot be changed without replacing it.",
    fix="Set EnclaveOptions: {Enabled: true} (CDK: enclave_enabled=True / "
    "nitro_enclave_enabled=True).",
    check=check,
)
