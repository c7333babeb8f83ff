"""EK-PCR-006: key policies bind PCRs other than the measured image the host runs (drift)."""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.attested_kms import condition_name
from enclavekit.errors import InvalidInput
from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.rules._common import POSITIVE_STRING_OPS
from enclavekit.lint.rules._kms import key_policy_at
from enclavekit.lint.world import World
from enclavekit.pcr import Measurements


def _measurements(meta: object) -> dict[str, str] | None:
    if not isinstance(meta, dict):
        return None
    image = meta.get("image")
    raw = image.get("measurements") if isinstance(image, dict) else None
    if not isinstance(raw, dict):
        return None
    try:
        m = Measurements.from_nitro_cli_json(raw)
    except (InvalidInput, ValueError, TypeError, KeyError):
        return None
    out = {f"PCR{i}": v.hex() for i, v in m.by_index().items()}
    out["ImageSha384"] = m.image_sha384
    return out


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        measured = _measurements(host.metadata)
        if measured is None:
            continue
        for key in world.host_keys(host):
            if key.doc is None:
                continue
            bound: list[tuple[str, set[str]]] = []
            matching_statement = False
            for stmt in key.doc.policy.statements:
                if stmt.effect != "Allow":
                    continue
                conds = [
                    (condition_name(c.key), c)
                    for c in stmt.conditions
                    if c.operator in POSITIVE_STRING_OPS and condition_name(c.key) in measured
                ]
                if not conds:
                    continue
                bad = [
                    (n, {v.lower() for v in c.values})
                    for n, c in conds
                    if measured[n] not in {v.lower() for v in c.values}
                ]
                if not bad:
                    matching_statement = True
                    break
                bound.extend(bad)
            if bound and not matching_statement:
                name, values = bound[0]
                yield RULE.finding(
                    key_policy_at(world, key),
                    f"key {key.resource.logical_id} binds {name}={sorted(values)[0][:16]}… but "
                    f"enclave host {host.resource.logical_id} runs an image with "
                    f"{name}={measured[name][:16]}…",
                )


RULE = Rule(
    id="EK-PCR-006",
    severity=Severity.ERROR,
    title="Key policy PCRs differ from the host's measured image (drift)",
    explanation="The enclave attests with the measurements of the image the host runs (named "
    "in its enclavekit:host Metadata); a key bound to other measurements refuses it, so the "
    "service fails at its first Decrypt after deploy.",
    fix="Rebuild the key policy from the same image (the constructs do this from one "
    "EnclaveImage), or keep a statement for both images during a rollout.",
    check=check,
)
