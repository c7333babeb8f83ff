"""ACM for Nitro Enclaves certificate associations (AssociateEnclaveCertificateIamRole and its
two siblings) and the service-account KMS key that guards them.

The certificate association does what AWS's does (kms-acm-cloudformation.md §3): the certificate,
its chain and its private key go into an S3 object `<role_arn>/<certificate_arn>` in the bucket
`aws-ec2-enclave-certificate-<region>-prod`; the private key PEM is encrypted with KMS under a
key of a separate local *service account* (SERVICE_ACCOUNT, standing in for the AWS-owned
account). That key's policy releases kms:Decrypt only to the associated roles, and only to an
attested enclave running *ACM's enclave image*: on AWS that is the image the
`aws-nitro-enclaves-acm` package ships; here it is the image enclavekit builds for that package
(local_backend.acm_enclave, `p11ne_measurements()`), named by `StringEqualsIgnoreCase
kms:RecipientAttestation:ImageSha384` = its PCR0. Never a user's image: an enclave host whose own
image claims the certificate (set-up C) is denied, as on AWS; a debug-mode enclave (PCR0 zero)
and every unattested call are denied too. The bucket lives in the service account too (moto
resolves bucket names across accounts), so the only way to the key is S3 GetObject + attested
kms:Decrypt, as on AWS. Decrypting a ciphertext of a service-account key is routed by the KMS
extension: the blob names the key id; `service_account_key_ids()` lists those keys.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.iam.models import iam_backends
from moto.kms.models import kms_backends

from enclavekit.policy.kms_actions import KMS_ADMIN_ACTIONS
from local_backend.moto_ext.acm.models import certificate_material
from local_backend.moto_ext.s3 import models as s3_ext

log = logging.getLogger("enclavekit.endpoint.ec2")

# The local stand-in for the AWS-owned account that holds the ACM-for-Nitro-Enclaves bucket and
# KMS key. Not the customer account (123456789012), so nothing there can read or manage them.
SERVICE_ACCOUNT = "000000000000"
ENCRYPTION_METHOD = "KMS"  # field value of AWS's object is not documented; ours names KMS
_ROLE_ARN = re.compile(r"^arn:aws:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_CERT_ARN = re.compile(r"^arn:aws:acm:([a-z0-9-]+):(\d{12}):certificate/[\w-]+$")


@dataclass(frozen=True)
class CertificateAssociation:
    """One ACM certificate associated with one IAM role (what the three GetAtts return)."""

    certificate_arn: str
    role_arn: str
    bucket: str
    object_key: str
    kms_key_id: str

    def to_api(self) -> dict[str, str]:
        return {
            "AssociatedRoleArn": self.role_arn,
            "CertificateS3BucketName": self.bucket,
            "CertificateS3ObjectKey": self.object_key,
            "EncryptionKmsKeyId": self.kms_key_id,
        }


_lock = threading.RLock()
# The associations' state, restored in place across endpoint restarts (local_backend.persist
# names these two): (account, region) -> {(certificate_arn, role_arn): association}, and
# region -> key id in SERVICE_ACCOUNT.
associations: dict[tuple[str, str], dict[tuple[str, str], CertificateAssociation]] = {}
service_keys: dict[str, str] = {}


def bucket_name(region: str) -> str:
    """The service account's bucket of association objects in `region` (AWS's name)."""
    return f"aws-ec2-enclave-certificate-{region}-prod"


def service_account_key_ids() -> dict[str, str]:
    """region -> id of the service-account KMS key that encrypts associated private keys."""
    with _lock:
        return dict(service_keys)


def acm_image_sha384() -> str:
    """PCR0 (hex) of ACM's enclave image, the only image the association key releases to."""
    from local_backend.acm_enclave import p11ne_measurements

    return p11ne_measurements().image_sha384


def _service_key_policy(roles: list[str]) -> str:
    """The service key's policy: Decrypt for each associated role, from ACM's image only."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ServiceAccountAdministration",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{SERVICE_ACCOUNT}:root"},
            "Action": [*KMS_ADMIN_ACTIONS, "kms:Encrypt"],
            "Resource": "*",
        }
    ]
    image = acm_image_sha384() if roles else None
    for n, role in enumerate(sorted(roles)):
        statements.append(
            {
                "Sid": f"ReleaseToAcmEnclaveOfAssociatedRole{n}",
                "Effect": "Allow",
                "Principal": {"AWS": role},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": image}
                },
            }
        )
    return json.dumps(
        {"Version": "2012-10-17", "Id": "aws-ec2-enclave-certificate", "Statement": statements}
    )


def _ensure_service_key(region: str) -> str:
    backend = kms_backends[SERVICE_ACCOUNT][region]
    key_id = service_keys.get(region)
    if key_id is None or key_id not in backend.keys:
        key = backend.create_key(
            policy=_service_key_policy([]),
            key_usage="ENCRYPT_DECRYPT",
            key_spec="SYMMETRIC_DEFAULT",
            description="ACM for Nitro Enclaves certificate keys (local)",
            tags=None,
        )
        key_id = service_keys[region] = key.id
    return key_id


def _refresh_service_key_policy(region: str) -> None:
    roles = sorted(
        {
            a.role_arn
            for (_acct, reg), table in associations.items()
            if reg == region
            for a in table.values()
        }
    )
    key_id = _ensure_service_key(region)
    kms_backends[SERVICE_ACCOUNT][region].put_key_policy(key_id, _service_key_policy(roles))


def _invalid(message: str) -> EC2ClientError:
    return EC2ClientError("InvalidParameterValue", message)


def _check_arns(account_id: str, region: str, certificate_arn: Any, role_arn: Any) -> None:
    if not isinstance(certificate_arn, str) or not (m := _CERT_ARN.match(certificate_arn)):
        raise _invalid(
            f"CertificateArn: expected arn:aws:acm:<region>:<account>:certificate/<id>, "
            f"found {certificate_arn!r}"
        )
    if m.group(1) != region or m.group(2) != account_id:
        raise _invalid(
            f"CertificateArn: the certificate must be in {account_id}/{region}, "
            f"found {certificate_arn}"
        )
    if not isinstance(role_arn, str) or not _ROLE_ARN.match(role_arn):
        raise _invalid(f"RoleArn: expected arn:aws:iam::<account>:role/<name>, found {role_arn!r}")


def _association_object(
    region: str, key_id: str, cert_pem: str, chain_pem: str, key_pem: bytes
) -> bytes:
    """The association's S3 object: certificate, chain, the key encrypted under `key_id`."""
    blob, _arn = kms_backends[SERVICE_ACCOUNT][region].encrypt(key_id, key_pem, {})
    return json.dumps(
        {
            "certificate": cert_pem,
            "certificateChain": chain_pem,
            "encryptedPrivateKey": base64.b64encode(blob).decode(),
            "encryptionMethod": ENCRYPTION_METHOD,
        }
    ).encode()


def associate(
    account_id: str, region: str, certificate_arn: str, role_arn: str
) -> CertificateAssociation:
    """AssociateEnclaveCertificateIamRole: write the S3 object and allow the role on the key."""
    _check_arns(account_id, region, certificate_arn, role_arn)
    try:
        iam_backends[account_id]["global"].get_role_by_arn(role_arn)
    except Exception as exc:  # moto raises IAMNotFoundException
        raise _invalid(f"RoleArn: role {role_arn} does not exist") from exc
    try:
        cert_pem, chain_pem, key_pem = certificate_material(account_id, region, certificate_arn)
    except Exception as exc:
        raise _invalid(f"CertificateArn: certificate {certificate_arn} does not exist") from exc
    with _lock:
        table = associations.setdefault((account_id, region), {})
        existing = table.get((certificate_arn, role_arn))
        if existing is not None:
            return existing
        key_id = _ensure_service_key(region)
        body = _association_object(region, key_id, cert_pem, chain_pem, key_pem)
        del key_pem
        bucket, object_key = bucket_name(region), f"{role_arn}/{certificate_arn}"
        s3_ext.ensure_bucket(SERVICE_ACCOUNT, region, bucket)
        s3_ext.put_object(SERVICE_ACCOUNT, bucket, object_key, body)
        assoc = CertificateAssociation(certificate_arn, role_arn, bucket, object_key, key_id)
        table[(certificate_arn, role_arn)] = assoc
        _refresh_service_key_policy(region)
    log.info("associated %s with %s -> s3://%s/%s", certificate_arn, role_arn, bucket, object_key)
    return assoc


def republish(account_id: str, region: str, certificate_arn: str) -> list[str]:
    """After ACM renewed `certificate_arn`: each association's S3 object written again with
    the new certificate, chain and encrypted key (same bucket, object key and KMS key), as
    ACM does for an associated certificate. The object keys written."""
    cert_pem, chain_pem, key_pem = certificate_material(account_id, region, certificate_arn)
    done = []
    with _lock:
        for (cert, _role), assoc in associations.get((account_id, region), {}).items():
            if cert != certificate_arn:
                continue
            body = _association_object(region, assoc.kms_key_id, cert_pem, chain_pem, key_pem)
            s3_ext.put_object(SERVICE_ACCOUNT, assoc.bucket, assoc.object_key, body)
            done.append(assoc.object_key)
    del key_pem
    log.info("renewed %s: re-published %d association object(s)", certificate_arn, len(done))
    return done


def associated_roles(
    account_id: str, region: str, certificate_arn: str
) -> list[CertificateAssociation]:
    """GetAssociatedEnclaveCertificateIamRoles."""
    if not isinstance(certificate_arn, str) or not _CERT_ARN.match(certificate_arn):
        raise _invalid(
            f"CertificateArn: expected an ACM certificate ARN, found {certificate_arn!r}"
        )
    with _lock:
        table = associations.get((account_id, region), {})
        return [a for (c, _r), a in table.items() if c == certificate_arn]


def all_associations() -> list[CertificateAssociation]:
    """Every association of every account and region, as they stand now."""
    with _lock:
        return [a for table in associations.values() for a in table.values()]


def is_associated(account_id: str, region: str, certificate_arn: str, role_arn: str) -> bool:
    with _lock:
        return (certificate_arn, role_arn) in associations.get((account_id, region), {})


def disassociate(account_id: str, region: str, certificate_arn: str, role_arn: str) -> bool:
    """DisassociateEnclaveCertificateIamRole: remove the object and the role's key access."""
    _check_arns(account_id, region, certificate_arn, role_arn)
    with _lock:
        table = associations.get((account_id, region), {})
        assoc = table.pop((certificate_arn, role_arn), None)
        if assoc is None:
            raise _invalid(
                f"The certificate {certificate_arn} is not associated with the role {role_arn}"
            )
        s3_ext.delete_object(SERVICE_ACCOUNT, assoc.bucket, assoc.object_key)
        _refresh_service_key_policy(region)
    log.info("disassociated %s from %s", certificate_arn, role_arn)
    return True
