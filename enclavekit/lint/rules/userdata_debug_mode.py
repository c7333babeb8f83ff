"""EK-UD-001: the host's user data starts an enclave in debug mode."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        for run in h.ud.run_enclaves:
            if run.debug_mode:
                yield RULE.finding(
                    h.location,
                    f"user data of enclave host {h.name} runs "
                    f"{run.eif_path or 'an enclave'} with --debug-mode: it attests with all-zero "
                    "PCRs and the parent reads its console",
                )


RULE = Rule(
    id="EK-UD-001",
    severity=Severity.ERROR,
    title="Enclave started in debug mode by the user data",
    explanation="nitro-cli run-enclave --debug-mode (or --attach-console, or a --config with "
    "debug_mode) gives the parent the enclave's console and makes it attest with all-zero "
    "PCR0/1/2: no PCR-bound key opens for it, and a key that accepts zeros opens for any debug "
    "enclave.",
    fix="Drop --debug-mode from the production host's user data; for a development stack, "
    "acknowledge EK-UD-001 on the host with a reason.",
    check=check,
)
