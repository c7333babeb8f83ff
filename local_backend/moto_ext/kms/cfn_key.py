"""AWS::KMS::Key as CloudFormation creates and updates it (moto's model, corrected).

moto's create keeps the policy as a dict and ignores KeySpec / KeyUsage; AWS stores the policy
as the JSON string GetKeyPolicy returns and honours both. moto has no update handler, so an
update deploy would replace the key and every ciphertext sealed under it would stop opening:
KeyPolicy, Description, EnableKeyRotation and Enabled change in place here, as on AWS.
"""

from __future__ import annotations

import json
from typing import Any

from moto.kms.models import Key as KmsKey
from moto.kms.models import kms_backends

from ..cfn_resource import CfnCall, patch_cfn_create

KEY_TYPE = "AWS::KMS::Key"


def _policy_text(props: dict[str, Any]) -> Any:
    policy = props.get("KeyPolicy")
    return json.dumps(policy) if isinstance(policy, dict) else policy


def _enabled(props: dict[str, Any]) -> bool:
    return props.get("Enabled", True) not in (False, "false")


def create_key(call: CfnCall) -> KmsKey:
    """moto's KMS::Key create, but with the policy stored as the JSON string AWS returns,
    and KeySpec / KeyUsage honoured."""
    props = call.props
    key = kms_backends[call.account_id][call.region].create_key(
        policy=_policy_text(props),
        key_usage=props.get("KeyUsage", "ENCRYPT_DECRYPT"),
        key_spec=props.get("KeySpec", "SYMMETRIC_DEFAULT"),
        description=props.get("Description") or "",
        tags=props.get("Tags", []),
        multi_region=bool(props.get("MultiRegion", False)),
    )
    key.key_rotation_status = bool(props.get("EnableKeyRotation", False))
    key.enabled = _enabled(props)
    return key


def update_key(
    original: KmsKey, new_name: str, cloudformation_json: Any, account_id: str, region_name: str
) -> KmsKey:
    """KeyPolicy, Description, EnableKeyRotation, Enabled change in place (same key id, so
    ciphertexts stay valid); KeySpec / KeyUsage changes replace the key."""
    props = cloudformation_json["Properties"]
    spec = props.get("KeySpec", "SYMMETRIC_DEFAULT")
    usage = props.get("KeyUsage", "ENCRYPT_DECRYPT")
    if spec != original.key_spec or usage != original.key_usage:
        new = create_key(CfnCall(new_name, props, account_id, region_name))
        original.delete(account_id, region_name)
        return new
    original.policy = _policy_text(props)
    original.description = props.get("Description") or ""
    original.key_rotation_status = bool(props.get("EnableKeyRotation", False))
    original.enabled = _enabled(props)
    return original


def install() -> None:
    """Put both handlers on moto's model (after the CloudFormation extension is installed)."""
    from ..cloudformation import models as cfn_ext

    patch_cfn_create(KmsKey, create_key)
    cfn_ext.register_updater(KEY_TYPE, update_key)
