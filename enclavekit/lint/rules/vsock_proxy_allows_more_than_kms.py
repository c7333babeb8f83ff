"""EK-UD-005: the vsock-proxy lets the enclave reach more than KMS in one region (warning)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import HostUserData, hosts_with_user_data
from enclavekit.lint.userdata import VSOCK_PROXY_CONFIG
from enclavekit.lint.world import World

_KMS = re.compile(r"^kms(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def _targets(h: HostUserData) -> list[str]:
    out = [addr for addr, _ in h.ud.proxy_targets]
    cfg = h.ud.yaml_file(VSOCK_PROXY_CONFIG, h.where)
    for entry in (cfg or {}).get("allowlist") or []:
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            out.append(entry["address"])
    return list(dict.fromkeys(out))


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        targets = _targets(h)
        regions = {m.group(1) for t in targets if (m := _KMS.match(t))}
        beyond = [t for t in targets if not _KMS.match(t)]
        if len(regions) > 1:
            beyond.append(f"KMS in {len(regions)} regions ({', '.join(sorted(regions))})")
        if beyond:
            yield RULE.finding(
                h.location,
                f"vsock-proxy of enclave host {h.name} lets the enclave reach "
                f"{', '.join(beyond)} beyond its region's KMS endpoint",
            )


RULE = Rule(
    id="EK-UD-005",
    severity=Severity.WARNING,
    title="vsock-proxy allows more than the region's KMS endpoint",
    explanation="The vsock-proxy is the enclave's only way out; every extra address in its "
    "allowlist (or on its command line) is a channel the enclave's code can use to send data "
    "off the host, and the parent-side proxy is what an attacker on the parent reconfigures.",
    fix="Allow only kms.<region>.amazonaws.com:443 (kms-fips in FIPS regions) in "
    "/etc/nitro_enclaves/vsock-proxy.yaml and on the vsock-proxy command line.",
    check=check,
)
