"""EK-UD-004: acm.yaml names a certificate that no association gives the host's role."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import hosts_with_user_data
from enclavekit.lint.userdata import ACM_CONFIG
from enclavekit.lint.world import World


def _certificates(acm: dict) -> list[tuple[str, str]]:
    out = []
    for token in acm.get("tokens") or []:
        if not isinstance(token, dict):
            continue
        source = token.get("source") if isinstance(token.get("source"), dict) else {}
        acm_src = source.get("Acm") if isinstance(source.get("Acm"), dict) else {}
        arn = acm_src.get("certificate_arn")
        if isinstance(arn, str):
            out.append((str(token.get("label", "?")), arn))
    return out


def check(world: World) -> Iterator[Finding]:
    for h in hosts_with_user_data(world):
        acm = h.ud.yaml_file(ACM_CONFIG, h.where)
        if not acm:
            continue
        role_arn = h.host.role.arn if h.host.role else None
        # associations of this role, or of a role this run cannot resolve (an import)
        associated = {
            str(world.props(a.template, a.resource).get("CertificateArn"))
            for a in world.associations
            if role_arn is None or a.role_arn == role_arn or "{{" in a.role_arn
        }
        unknowable = any("{{" in c for c in associated)
        for label, arn in _certificates(acm):
            if unknowable or "{{" in arn or "$" in arn or arn in associated:
                continue
            yield RULE.finding(
                h.location,
                f"acm.yaml token {label!r} of enclave host {h.name} names "
                f"certificate {arn}, but no AWS::EC2::EnclaveCertificateIamRoleAssociation "
                "associates it with the host's role",
            )


RULE = Rule(
    id="EK-UD-004",
    severity=Severity.ERROR,
    title="ACM token without a certificate association",
    explanation="The ACM for Nitro Enclaves agent can fetch a certificate only after it is "
    "associated with the instance role (AWS::EC2::EnclaveCertificateIamRoleAssociation); a "
    "token in acm.yaml for a certificate with no association leaves nginx without its key.",
    fix="Add an EnclaveCertificateIamRoleAssociation of that certificate with the host's role "
    "(the EnclaveCertificate construct does this), or fix the certificate_arn in acm.yaml.",
    check=check,
)
