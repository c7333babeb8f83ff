"""Attested KMS keys: decrypt-class actions only for an enclave that proves its measurements.

For each grant the key policy gets
  * Allow   grantee  Decrypt/GenerateDataKey*/GenerateRandom/DeriveSharedSecret
            if StringEqualsIgnoreCase kms:RecipientAttestation:PCRn == the image's PCRn (all n);
  * Deny    grantee  the same actions
            if StringNotEqualsIgnoreCase on any one of those keys — one statement per key, since
            keys inside one condition block are ANDed, and a negated operator is true when the
            request has no attestation at all, so unattested calls are refused explicitly.
Nothing is ever added to the grantee's identity policy, and AttestedKey's own policy gives the
account root management actions (and Encrypt, for sealing) only — never Decrypt — so no IAM
policy anywhere in the account can open a path around the attestation.

The grantee is any iam.IGrantable (an EnclaveHost is one: its role). Each grant is recorded on
the key (`AttestedGrants`, a child construct without resources); a host lists the keys bound
to it from those records (`keys_granted_to`), so this module never needs to know what a host
is, and host.py imports this one, never the other way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jsii
from aws_cdk import Annotations, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from constructs import Construct, IValidation
from enclavekit.attested_kms import (
    GRANT_ACTIONS,
    IMAGE_SHA384,
    condition_key,
    condition_name,
    pcr_key,
)
from enclavekit.errors import InvalidInput
from enclavekit.policy.kms_actions import KMS_ADMIN_ACTIONS

from .image import EnclaveImage

# What an attested grant allows (and denies without attestation): enclavekit.attested_kms.
ATTESTED_ACTIONS: tuple[str, ...] = GRANT_ACTIONS
SEAL_ACTIONS: tuple[str, ...] = ("kms:Encrypt",)
BINDABLE_PCRS = (0, 1, 2, 8)

_counters: dict[str, int] = {}


class AttestedGrants(Construct):
    """The attested grants made on one key: a record in the construct tree, no resources."""

    ID = "EnclavekitAttestedGrants"

    def __init__(self, key: kms.Key) -> None:
        super().__init__(key, self.ID)
        self.key = key
        self.grantees: list[iam.IGrantable] = []

    @classmethod
    def of(cls, key: kms.Key) -> AttestedGrants:
        """The record of `key`, created on its first grant."""
        found = key.node.try_find_child(cls.ID)
        return found if isinstance(found, AttestedGrants) else cls(key)


def keys_granted_to(grantee: Construct) -> list[kms.Key]:
    """The keys of this app with an attested grant to `grantee`, in construct-tree order."""
    return [
        c.key
        for c in grantee.node.root.node.find_all()
        if isinstance(c, AttestedGrants) and any(g is grantee for g in c.grantees)
    ]


class AttestedKey(Construct):
    """A symmetric KMS key whose policy releases plaintext only to attested enclaves."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        description: str | None = None,
        alias: str | None = None,
        enable_key_rotation: bool = True,
        removal_policy: RemovalPolicy | None = None,
    ) -> None:
        """Create the key with an admin statement that cannot decrypt (see module doc)."""
        super().__init__(scope, id)
        root = iam.AccountRootPrincipal()
        policy = iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    sid="KeyAdministrationWithoutDecrypt",
                    principals=[root],
                    actions=list(KMS_ADMIN_ACTIONS),
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    sid="SealWithoutDecrypt",
                    principals=[root],
                    actions=list(SEAL_ACTIONS),
                    resources=["*"],
                ),
            ]
        )
        self.key = kms.Key(
            self,
            "Resource",
            policy=policy,
            description=description or "enclavekit: released only to attested enclaves",
            enable_key_rotation=enable_key_rotation,
            removal_policy=removal_policy,
            alias=alias,
        )
        self.key_arn = self.key.key_arn
        self.key_id = self.key.key_id
        self.grants: list[iam.Grant] = []
        self.node.add_validation(_HasAttestedGrant(self))

    def grant_attested_decrypt(
        self,
        grantee: iam.IGrantable,
        image: EnclaveImage,
        *,
        pcrs: Sequence[int] = (0, 1, 2),
        image_sha384: bool = False,
    ) -> iam.Grant:
        """Release the attested actions to `grantee` when it attests `image`'s `pcrs`."""
        return grant_attested_decrypt(self, grantee, image, pcrs=pcrs, image_sha384=image_sha384)

    def grant_encrypt(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let `grantee` seal data under this key (Encrypt never returns plaintext)."""
        return self.key.grant_encrypt(grantee)


@jsii.implements(IValidation)
class _HasAttestedGrant:
    def __init__(self, key: AttestedKey) -> None:
        self._key = key

    def validate(self) -> list[str]:
        if self._key.grants:
            return []
        return [
            f"attested key {self._key.node.path} has no grant_attested_decrypt; expected at "
            "least one enclave image bound to it, got none (nobody could ever decrypt)"
        ]


def _kms_key(key: Any) -> kms.Key:
    if isinstance(key, AttestedKey):
        return key.key
    if isinstance(key, kms.Key):
        return key
    raise InvalidInput(
        f"key must be an AttestedKey or a kms.Key defined in this app (its policy is edited), "
        f"got {key!r}"
    )


def _condition_values(image: EnclaveImage, pcrs: Sequence[int], image_sha384: bool) -> dict:
    if not isinstance(image, EnclaveImage):
        raise InvalidInput(f"image must be an EnclaveImage, got {image!r}")
    if image.is_debug:
        raise InvalidInput(
            f"image {image.name!r} is a debug image whose PCRs are all zero; a key bound to "
            "it would be released to any debug enclave; expected a real image, got a debug one"
        )
    chosen = tuple(pcrs)
    bad = [p for p in chosen if isinstance(p, bool) or p not in BINDABLE_PCRS]
    if bad or len(set(chosen)) != len(chosen):
        raise InvalidInput(
            f"pcrs must be distinct indexes from {BINDABLE_PCRS} (PCR3/4 depend on the deployed "
            f"role/instance), got {tuple(pcrs)!r}"
        )
    if not chosen and not image_sha384:
        raise InvalidInput("pcrs must name at least one PCR (or image_sha384=True), got ()")
    if 8 in chosen and image.measurements.pcr8 is None:
        raise InvalidInput(
            f"pcrs includes 8 but image {image.name!r} is not signed (no PCR8); "
            f"allowed: {(0, 1, 2)}"
        )
    values = {pcr_key(n): image.measurements.hex(n) for n in sorted(chosen)}
    if image_sha384:
        values[condition_key(IMAGE_SHA384)] = image.measurements.image_sha384
    return values


def grant_attested_decrypt(
    key: Any,
    grantee: iam.IGrantable,
    image: EnclaveImage,
    *,
    pcrs: Sequence[int] = (0, 1, 2),
    image_sha384: bool = False,
) -> iam.Grant:
    """Key-policy-only grant of ATTESTED_ACTIONS to `grantee` attesting `image`'s `pcrs`.

    An EnclaveHost grantee (an iam.IGrantable: its role) then lists the key in its Metadata.
    """
    kms_key = _kms_key(key)
    if not hasattr(grantee, "grant_principal"):
        raise InvalidInput(f"grantee must be an iam.IGrantable (e.g. EnclaveHost), got {grantee!r}")
    values = _condition_values(image, pcrs, image_sha384)
    n = _counters[kms_key.node.addr] = _counters.get(kms_key.node.addr, 0) + 1
    principal = grantee.grant_principal
    allow = iam.PolicyStatement(
        sid=f"AttestedDecrypt{n}",
        effect=iam.Effect.ALLOW,
        principals=[principal],
        actions=list(ATTESTED_ACTIONS),
        resources=["*"],
        conditions={"StringEqualsIgnoreCase": values},
    )
    grant = iam.Grant.add_statement_to_resource_policy(
        statement=allow,
        resource=kms_key,
        grantee=grantee,
        actions=list(ATTESTED_ACTIONS),
        resource_arns=["*"],
    )
    for cond_key, value in values.items():
        kms_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid=f"DenyUnattested{n}{condition_name(cond_key)}",
                effect=iam.Effect.DENY,
                principals=[principal],
                actions=list(ATTESTED_ACTIONS),
                resources=["*"],
                conditions={"StringNotEqualsIgnoreCase": {cond_key: value}},
            )
        )
    if isinstance(key, AttestedKey):
        key.grants.append(grant)
    else:
        Annotations.of(kms_key).add_warning_v2(
            "enclavekit:plain-kms-key",
            "the attested grant denies unattested use by its grantee, but this key's own policy "
            "may still let other IAM principals decrypt; prefer AttestedKey",
        )
    AttestedGrants.of(kms_key).grantees.append(grantee)
    Stack.of(kms_key)  # the key must live in a stack (raises otherwise)
    return grant
