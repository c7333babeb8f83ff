"""S3 pieces moto lacks: `AWS::S3::BucketPolicy` in CloudFormation (cdk bootstrap emits one),
bucket-policy conditions evaluated as on AWS, and the bucket/objects the ACM-for-Nitro-Enclaves
association writes.

moto's bucket-policy check treats a statement whose Condition does not match as a *deny*, so the
bootstrap bucket's `Deny unless aws:SecureTransport` blocked every upload. Here a statement
applies only when its conditions match. The endpoint listens on loopback only, which we count as
a secure transport (`aws:SecureTransport` = true): the traffic never leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from moto.core.common_models import CloudFormationModel
from moto.iam.access_control import PermissionResult
from moto.s3.exceptions import MissingBucket
from moto.s3.models import FakeBucket, s3_backends

from enclavekit.errors import InvalidInput
from enclavekit.policy import action_matches, conditions_match, parse_policy, resource_matches

from ..cfn_resource import CfnCall, CfnResource

PARTITION = "aws"
# Request context the bucket-policy check sees (loopback-only endpoint, see module doc).
REQUEST_CONTEXT = {"aws:SecureTransport": "true"}


def _bucket_permission(self: FakeBucket, action: str, resource: str) -> PermissionResult:
    """moto's anonymous bucket-policy check (statements for Principal "*"), with conditions
    evaluated by the core policy module: a statement whose conditions do not match does not
    apply. Explicit deny wins, then allow, else neutral."""
    if self.policy is None:
        return PermissionResult.NEUTRAL
    policy = parse_policy(self.policy.decode() if isinstance(self.policy, bytes) else self.policy)
    keys = {k.lower(): v for k, v in REQUEST_CONTEXT.items()}
    permitted = False
    for stmt in policy.statements:
        if not any(p.value == "*" for p in stmt.principals or ()):
            continue
        if stmt.actions is not None and not any(action_matches(a, action) for a in stmt.actions):
            continue
        if stmt.resources is not None and not any(
            resource_matches(r, resource) for r in stmt.resources
        ):
            continue
        if not conditions_match(stmt.conditions, keys):
            continue
        if stmt.effect == "Deny":
            return PermissionResult.DENIED
        permitted = True
    return PermissionResult.PERMITTED if permitted else PermissionResult.NEUTRAL


def install() -> None:
    """Patch moto's bucket-policy check (idempotent); importing registers BucketPolicy."""
    FakeBucket.get_permission = _bucket_permission  # type: ignore[method-assign,assignment]


@dataclass(eq=False)
class BucketPolicy(CfnResource, CloudFormationModel):
    """`AWS::S3::BucketPolicy`: puts the policy on the bucket; delete removes it."""

    CFN_TYPE = "AWS::S3::BucketPolicy"
    CFN_REF = "bucket"

    account_id: str
    bucket: str
    document: dict[str, Any]

    @classmethod
    def cfn_create(cls, call: CfnCall) -> BucketPolicy:
        props = call.props
        bucket, document = props.get("Bucket"), props.get("PolicyDocument")
        if not isinstance(bucket, str) or not isinstance(document, dict):
            raise InvalidInput(
                f"AWS::S3::BucketPolicy {call.logical_id}: expected Bucket (string) and "
                f"PolicyDocument (object), found {type(bucket).__name__} and "
                f"{type(document).__name__}"
            )
        s3_backends[call.account_id][PARTITION].put_bucket_policy(
            bucket, json.dumps(document).encode()
        )
        return cls(call.account_id, bucket, document)

    @classmethod
    def cfn_update(cls, old: BucketPolicy, call: CfnCall) -> BucketPolicy:
        if call.props.get("Bucket") != old.bucket:
            old.delete(call.account_id, call.region)
        return cls.cfn_create(call)

    def delete(self, account_id: str, region_name: str) -> None:
        # If the bucket went first there is nothing left to remove.
        with contextlib.suppress(MissingBucket):
            s3_backends[self.account_id][PARTITION].delete_bucket_policy(self.bucket)


def ensure_bucket(account_id: str, region: str, bucket: str) -> None:
    """Create `bucket` in `account_id` unless it exists."""
    backend = s3_backends[account_id][PARTITION]
    if bucket not in backend.buckets:
        backend.create_bucket(bucket, region)


def put_object(account_id: str, bucket: str, key: str, body: bytes) -> None:
    s3_backends[account_id][PARTITION].put_object(bucket, key, body)


def delete_object(account_id: str, bucket: str, key: str) -> None:
    backend = s3_backends[account_id][PARTITION]
    if bucket in backend.buckets:
        backend.delete_object(bucket, key)


def get_object(account_id: str, bucket: str, key: str) -> bytes | None:
    backend = s3_backends[account_id][PARTITION]
    if bucket not in backend.buckets:
        return None
    obj = backend.buckets[bucket].keys.get(key)
    return None if obj is None else bytes(obj.value)
