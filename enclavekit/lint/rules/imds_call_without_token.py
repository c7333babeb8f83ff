"""EK-UD-006: the user data calls IMDS without a session token."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.world import World


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        bare = [line for line, token in h.ud.imds_calls if not token]
        if not bare:
            continue
        first = bare[0] if len(bare[0]) <= 100 else bare[0][:97] + "..."
        calls = (
            f"user data of enclave host {h.name} calls IMDS without a token "
            f"({len(bare)} call(s), first: {first})"
        )
        if h.host.http_tokens == "required":
            yield RULE.finding(
                h.location,
                f"{calls}; HttpTokens is required, so IMDS answers 401 and the boot script fails",
                Severity.ERROR,
            )
        else:
            yield RULE.finding(h.location, f"{calls}: it relies on IMDSv1")


RULE = Rule(
    id="EK-UD-006",
    severity=Severity.WARNING,
    title="IMDS called without a session token",
    explanation="A curl/wget to 169.254.169.254 without X-aws-ec2-metadata-token uses IMDSv1: "
    "it works only while tokens are optional (the SSRF exposure of EK-HOST-004), and fails "
    "with 401 once HttpTokens is required (then it is an error).",
    fix="Get a token first (PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds) "
    "and send it as X-aws-ec2-metadata-token on every call, then require IMDSv2.",
    check=check,
)
