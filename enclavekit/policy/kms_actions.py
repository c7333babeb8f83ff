"""KMS action sets shared by the constructs (key policies we write) and the local endpoint
(the key policies it writes for its own service keys)."""

from __future__ import annotations

# Key administration without any action that returns plaintext or re-encrypts: what an
# administrator of an attested key may do without ever being able to read what it protects.
KMS_ADMIN_ACTIONS: tuple[str, ...] = (
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
)
