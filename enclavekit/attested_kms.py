"""The attested-KMS vocabulary: which KMS operations take a `Recipient`, and the
`kms:RecipientAttestation:*` condition keys that bind a key policy to enclave measurements.

One place for what the constructs write, the local KMS enforces, the linter reads, verify and
the demo check. Adding an attested operation means adding it to `RECIPIENT_OPERATIONS` here
(and to `GRANT_ACTIONS` if no pattern there covers it); the local KMS needs no edit unless moto
lacks the operation itself. Pure: stdlib and `enclavekit.policy` only.

Source: AWS KMS Developer Guide, "Cryptographic attestation support in AWS KMS" and
"Condition keys for AWS Nitro Enclaves" (kms:RecipientAttestation:ImageSha384, :PCR0..PCR31).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from enclavekit.policy import Policy, action_matches, principal_matches

# KMS API operations that accept `Recipient` (an attestation document) and then answer
# `CiphertextForRecipient` instead of plaintext. The order is the order lint messages list them.
RECIPIENT_OPERATIONS: tuple[str, ...] = (
    "Decrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateRandom",
    "DeriveSharedSecret",
)
# The IAM actions of those operations, one each (what a policy evaluation asks about).
ATTESTED_ACTIONS: tuple[str, ...] = tuple(f"kms:{op}" for op in RECIPIENT_OPERATIONS)
# What an attested grant writes into a key policy: patterns that cover every attested action
# (checked at import below), in the compact form the constructs have always synthesized.
GRANT_ACTIONS: tuple[str, ...] = (
    "kms:Decrypt",
    "kms:GenerateDataKey*",
    "kms:GenerateRandom",
    "kms:DeriveSharedSecret",
)

CONDITION_PREFIX = "kms:RecipientAttestation:"
IMAGE_SHA384 = "ImageSha384"  # = PCR0 of the attestation document
MAX_PCR = 31  # kms:RecipientAttestation:PCR0 … PCR31
_KEY = re.compile(r"^kms:recipientattestation:(imagesha384|pcr(\d+))$", re.IGNORECASE)


def _covered(action: str) -> bool:
    return any(action_matches(pattern, action) for pattern in GRANT_ACTIONS)


if not all(_covered(a) for a in ATTESTED_ACTIONS):  # pragma: no cover - a vocabulary edit
    raise ImportError("GRANT_ACTIONS must cover every action in ATTESTED_ACTIONS")


def is_attestation_key(key: str) -> bool:
    """Any key in the kms:RecipientAttestation family, valid or not (case-insensitive)."""
    return key.lower().startswith(CONDITION_PREFIX[:-1].lower())


def condition_name(key: str) -> str | None:
    """`kms:RecipientAttestation:PCR0` -> "PCR0", `…:ImageSha384` -> "ImageSha384"; None for
    anything KMS never sets (other keys, bare prefix, PCR32, made-up suffixes)."""
    m = _KEY.match(key)
    if not m:
        return None
    if m.group(2) is None:
        return IMAGE_SHA384
    index = int(m.group(2))
    return f"PCR{index}" if index <= MAX_PCR else None


def pcr_index(name: str) -> int:
    """The PCR a condition name compares: "PCR<n>" -> n, "ImageSha384" -> 0."""
    return 0 if name == IMAGE_SHA384 else int(name[3:])


def condition_key(name: str) -> str:
    """The full condition key of a name ("PCR1" -> "kms:RecipientAttestation:PCR1")."""
    return f"{CONDITION_PREFIX}{name}"


def pcr_key(index: int) -> str:
    """`kms:RecipientAttestation:PCR<index>`."""
    return condition_key(f"PCR{index}")


def request_keys(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    """The condition keys KMS sets for a verified document: every PCR and ImageSha384 (= PCR0),
    lower-case hex."""
    keys = {pcr_key(i): v.hex() for i, v in sorted(pcrs.items())}
    if 0 in pcrs:
        keys[condition_key(IMAGE_SHA384)] = pcrs[0].hex()
    return keys


@dataclass(frozen=True)
class Binding:
    """One attestation condition of a policy statement."""

    statement: int  # index in Policy.statements
    effect: str
    operator: str  # base operator, e.g. "StringEqualsIgnoreCase"
    name: str  # "PCR<n>" | "ImageSha384"
    values: tuple[str, ...]

    @property
    def pcr(self) -> int:
        return pcr_index(self.name)


def bindings(policy: Policy, principal: str | None = None) -> Iterator[Binding]:
    """Every valid attestation condition of `policy`, in order; with `principal`, only of the
    statements whose Principal names it."""
    for i, st in enumerate(policy.statements):
        if principal is not None and not any(
            principal_matches(p, principal) for p in st.principals or ()
        ):
            continue
        for cond in st.conditions:
            name = condition_name(cond.key)
            if name is not None:
                yield Binding(i, st.effect, cond.operator, name, cond.values)
