"""parent-denied: Decrypt with the instance role and no attestation is AccessDeniedException
(an agent host's sealed secrets and certificate key; a user-data host's attested keys or its
ACM association's key).
"""

from __future__ import annotations

import json

from local_backend.verify.acm_host import acm_tokens
from local_backend.verify.agent_host import ParentAgentHost
from local_backend.verify.keys import attested_keys, denied
from local_backend.verify.report import Check, not_applicable
from local_backend.verify.userdata import UserDataHost


def check_parent_denied(host: ParentAgentHost) -> tuple[bool, str]:
    creds = host.parent.role_credentials()
    kms = host.client("kms", creds)
    results = []
    secrets_, _ = host.parent.sealed_secrets(creds)
    for spec in secrets_:
        key_id = secret_key_id(host, spec.name)
        ok, what = denied(lambda s=spec: kms.decrypt(CiphertextBlob=s.ciphertext), key_id)
        if not ok:
            if what != "ALLOWED":
                return False, f"secret {spec.name!r}: {what}"
            return False, (
                f"the parent decrypted secret {spec.name!r} with the instance role "
                f"and no attestation: the key policy does not bind it"
            )
        results.append(spec.name)
    bundle = host.parent.certificate_bundle(creds)
    if bundle is not None:
        ok, what = denied(lambda: kms.decrypt(CiphertextBlob=bundle.private_key_ciphertext), None)
        if not ok:
            if what != "ALLOWED":
                return False, f"certificate key: {what}"
            return False, "the parent decrypted the certificate's private key (ALLOWED)"
        results.append("certificate key")
    if not results:
        return False, "nothing sealed to try"
    return True, f"Decrypt without attestation: AccessDeniedException for {', '.join(results)}"


def secret_key_id(host: ParentAgentHost, name: str) -> str | None:
    """The KMS key id the host's Metadata seals secret `name` under (None if undeclared)."""
    for s in host.spec.get("secrets") or []:
        if s.get("name") == name and s.get("key"):
            return host.physical_id(s["key"]).rsplit("/", 1)[-1]
    return None


def _association_key_denied(h: UserDataHost) -> tuple[bool, str]:
    """An ACM agent host (set-up A): the role's credentials, as the host's IMDS gives them to
    any parent-side process, read the association's S3 object but cannot decrypt the
    certificate's key in it — ACM releases it only to its own attested enclave image."""
    import base64

    creds = h.role_credentials()
    kms = h.client("kms", creds)
    done = []
    for token in acm_tokens(h):
        arn = token.source.certificate_arn
        roles = h.client("ec2").get_associated_enclave_certificate_iam_roles(  # verify asks
            CertificateArn=arn
        )["AssociatedRoles"]
        mine = [r for r in roles if r.get("AssociatedRoleArn") == h.role_arn]
        if not mine:
            return False, f"certificate {arn.rsplit('/', 1)[-1]} is not associated with the role"
        obj = h.client("s3", creds).get_object(
            Bucket=mine[0]["CertificateS3BucketName"], Key=mine[0]["CertificateS3ObjectKey"]
        )
        sealed = json.loads(obj["Body"].read())
        blob = base64.b64decode(sealed["encryptedPrivateKey"])
        ok, what = denied(lambda b=blob: kms.decrypt(CiphertextBlob=b), None)
        if not ok:
            if what == "ALLOWED":
                return (
                    False,
                    "the instance role decrypted the certificate's key without attestation",
                )
            return False, f"certificate key: {what}"
        done.append(token.label)
    return True, (
        "Decrypt of the association's certificate key with the instance role, no attestation: "
        f"AccessDeniedException ({', '.join(done)})"
    )


def check_userdata_parent_denied(h: UserDataHost) -> tuple[bool, str] | Check:
    keys = attested_keys(h)
    if not keys and acm_tokens(h):
        return _association_key_denied(h)
    if not keys:
        return not_applicable(
            "parent-denied", "no KMS key grants the host role under attestation conditions"
        )
    creds = h.role_credentials()
    root_kms, role_kms = h.client("kms"), h.client("kms", creds)
    tried = []
    for arn in sorted(keys):
        key = arn.rsplit("/", 1)[-1]
        blob = None
        for kms in (root_kms, role_kms):
            try:
                out = kms.encrypt(KeyId=arn, Plaintext=b"enclavekit verify probe")
                blob = out["CiphertextBlob"]
                break
            except Exception:  # noqa: BLE001 - denied Encrypt: try the other principal
                continue
        if blob is None:
            return False, (
                f"could not check: neither the account root nor the host role may Encrypt "
                f"under key {key}, so there is no ciphertext to try"
            )
        ok, what = denied(lambda b=blob: role_kms.decrypt(CiphertextBlob=b), key)
        if not ok:
            if what == "ALLOWED":
                return False, f"the instance role decrypted under key {key} without attestation"
            return False, f"key {key}: {what}"
        tried.append(key)
    return True, f"Decrypt without attestation: AccessDeniedException for {', '.join(tried)}"
