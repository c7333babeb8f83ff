"""ACM certificates issued at once by a local CA, with a real private key kept by the local ACM.

Stock moto leaves a requested certificate PENDING_VALIDATION and signs it with a made-up AWS
root. Locally there is no DNS to validate against, so we issue at once from a CA created once
per state dir (`<state>/acm-ca/root.pem` + `root-key.pem`, P-384); `enclavekit local ca` prints
its root so a client can trust the chain. The leaf's private key stays in moto's in-memory
CertBundle; it is never logged, and reaches the state dir only inside the endpoint's sealed
state snapshot (local_backend.persist), as ACM keeps its keys encrypted at rest.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from moto.acm.models import AWSCertificateManagerBackend, CertBundle, acm_backends
from moto.core.common_models import CloudFormationModel

from enclavekit.errors import BackendError, InvalidInput

from ..cfn_resource import CfnCall, CfnResource

ROOT_CN = "enclavekit local ACM root CA"
LEAF_DAYS = 395
KEY_ALGORITHMS = ("RSA_2048", "EC_prime256v1", "EC_secp384r1")

_ca: LocalCa | None = None
_lock = threading.Lock()


@dataclass(frozen=True)
class LocalCa:
    """The local ACM root: a P-384 self-signed CA under one directory."""

    directory: Path
    root_pem: bytes
    _key_pem: bytes

    @classmethod
    def load_or_create(cls, directory: Path, common_name: str = ROOT_CN) -> LocalCa:
        """Load the CA under `directory`, creating it the first time (mode 0600 key)."""
        directory = Path(directory)
        cert_path, key_path = directory / "root.pem", directory / "root-key.pem"
        if cert_path.exists() and key_path.exists():
            return cls(directory, cert_path.read_bytes(), key_path.read_bytes())
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclavekit"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA384())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        root_pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(root_pem)
        return cls(directory, root_pem, key_pem)

    def issue(
        self, domain: str, sans: list[str], key_algorithm: str = "RSA_2048"
    ) -> tuple[bytes, bytes]:
        """A TLS server certificate for `domain` + `sans`: (cert PEM, private key PEM)."""
        if not domain or len(domain) > 253:
            raise InvalidInput(
                f"DomainName: expected a DNS name of 1..253 characters, found {domain!r}"
            )
        if key_algorithm not in KEY_ALGORITHMS:
            raise InvalidInput(
                f"KeyAlgorithm: expected one of {', '.join(KEY_ALGORITHMS)}, "
                f"found {key_algorithm!r}"
            )
        if key_algorithm == "RSA_2048":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif key_algorithm == "EC_prime256v1":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ec.generate_private_key(ec.SECP384R1())
        ca_key = serialization.load_pem_private_key(self._key_pem, None)
        ca_cert = x509.load_pem_x509_certificate(self.root_pem)
        names = list(dict.fromkeys([domain, *sans]))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                critical=False,
            )  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def local_ca() -> LocalCa:
    """The CA of the state dir given to install()."""
    if _ca is None:
        raise BackendError("local_backend.moto_ext.acm.install(state_dir) was not called")
    return _ca


def issue_certificate(
    account_id: str, region: str, domain: str, sans: list[str], key_algorithm: str = "RSA_2048"
) -> CertBundle:
    """Issue, store and return an ISSUED certificate in the account's local ACM."""
    cert_pem, key_pem = local_ca().issue(domain, sans, key_algorithm)
    bundle = CertBundle(
        account_id,
        cert_pem,
        key_pem,
        chain=None,
        region=region,
        cert_type="AMAZON_ISSUED",
        cert_status="ISSUED",
    )
    bundle.chain = local_ca().root_pem  # our root, not moto's made-up AWS root
    acm_backends[account_id][region]._certificates[bundle.arn] = bundle
    return bundle


def certificate_material(account_id: str, region: str, arn: str) -> tuple[str, str, bytes]:
    """(certificate PEM, chain PEM, private key PEM) of an ACM certificate, for the association."""
    bundle = acm_backends[account_id][region].get_certificate(arn)
    return bundle.cert.decode(), bundle.chain.decode(), bytes(bundle.key)


def renew_certificate(account_id: str, region: str, arn: str) -> CertBundle:
    """ACM's managed renewal of a certificate it issued: a new certificate (new key pair,
    serial and validity, the same names) under the same ARN. The associations' objects are
    re-published by the caller (`moto_ext.ec2.certificates.republish`), as ACM does for them."""
    bundle = acm_backends[account_id][region].get_certificate(arn)  # ResourceNotFound
    if bundle.type != "AMAZON_ISSUED":
        raise InvalidInput(
            f"certificate {arn}: expected one ACM issued (AMAZON_ISSUED), found {bundle.type}: "
            "ACM renews only the certificates it issued"
        )
    key = serialization.load_pem_private_key(bytes(bundle.key), None)
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RSA_2048"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        algorithm = "EC_prime256v1"
    else:
        algorithm = "EC_secp384r1"
    names = [n for n in bundle.sans if n != bundle.common_name]
    cert_pem, key_pem = local_ca().issue(str(bundle.common_name), names, algorithm)
    with _lock:
        bundle.cert, bundle.key = cert_pem, key_pem
        bundle._key = bundle.validate_pk()
        bundle._cert = bundle.validate_certificate()
    return bundle


@dataclass(eq=False)
class Certificate(CfnResource, CloudFormationModel):
    """`AWS::CertificateManager::Certificate`, issued at once by the local CA.

    Ref is the ARN; the resource has no GetAtt attributes. Every property requires replacement
    on AWS: an update creates the new certificate first, then deletes the old one (the
    default `cfn_update`)."""

    CFN_TYPE = "AWS::CertificateManager::Certificate"
    CFN_REF = "bundle.arn"

    bundle: CertBundle
    account_id: str
    region: str

    @classmethod
    def cfn_create(cls, call: CfnCall) -> Certificate:
        props, account_id, region_name = call.props, call.account_id, call.region
        domain = props.get("DomainName")
        if not isinstance(domain, str):
            raise InvalidInput(
                f"AWS::CertificateManager::Certificate {call.logical_id}: "
                f"DomainName must be a string, found {domain!r}"
            )
        ca_arn = props.get("CertificateAuthorityArn")
        if ca_arn:  # issued by a private CA of the account (moto_ext.acmpca)
            from local_backend.moto_ext.acmpca.models import (
                issue_private_certificate,
                pca_failure,
            )

            failure = pca_failure(account_id, region_name, str(ca_arn))
            if failure:
                raise InvalidInput(
                    f"AWS::CertificateManager::Certificate {call.logical_id}: the "
                    f"certificate failed: {failure} (certificate authority {ca_arn})"
                )
            private = issue_private_certificate(
                account_id,
                region_name,
                str(ca_arn),
                domain,
                list(props.get("SubjectAlternativeNames") or []),
                props.get("KeyAlgorithm") or "RSA_2048",
            )
            return cls(private, account_id, region_name)
        bundle = issue_certificate(
            account_id,
            region_name,
            domain,
            list(props.get("SubjectAlternativeNames") or []),
            props.get("KeyAlgorithm") or "RSA_2048",
        )
        tags = [{"Key": t["Key"], "Value": t["Value"]} for t in props.get("Tags") or []]
        if tags:
            bundle.tags.add(tags)
        return cls(bundle, account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        backend = acm_backends[self.account_id][self.region]
        backend._certificates.pop(self.bundle.arn, None)


def install(state_dir: Path) -> None:
    """Create/load the CA and make RequestCertificate issue at once from it."""
    global _ca
    with _lock:
        _ca = LocalCa.load_or_create(Path(state_dir) / "acm-ca")
        if getattr(AWSCertificateManagerBackend, "_enclavekit_patched", False):
            return
        original = AWSCertificateManagerBackend.request_certificate

        def request_certificate(
            self: AWSCertificateManagerBackend,
            domain_name: str,
            idempotency_token: str,
            subject_alt_names: list[str],
            tags: list[dict[str, str]],
            cert_authority_arn: str | None = None,
            cert_options: dict[str, Any] | None = None,
        ) -> str:
            if cert_authority_arn:  # issued by the account's private CA (moto_ext.acmpca)
                from local_backend.moto_ext.acmpca.models import (
                    issue_private_certificate,
                    pca_failure,
                )

                failure = pca_failure(self.account_id, self.region_name, cert_authority_arn)
                if failure:  # AWS: the request is accepted, the certificate FAILED
                    arn = original(
                        self,
                        domain_name,
                        idempotency_token,
                        subject_alt_names,
                        tags,
                        cert_authority_arn,
                        cert_options,
                    )
                    self._certificates[arn].status = "FAILED"
                    self._certificates[arn].failure_reason = failure
                    return arn
                bundle = issue_private_certificate(
                    self.account_id,
                    self.region_name,
                    cert_authority_arn,
                    domain_name,
                    list(subject_alt_names or []),
                )
            else:
                bundle = issue_certificate(
                    self.account_id, self.region_name, domain_name, list(subject_alt_names or [])
                )
            if cert_options:
                bundle.cert_options.update(cert_options)
            if tags:
                bundle.tags.add(tags)
            return bundle.arn

        AWSCertificateManagerBackend.request_certificate = request_certificate  # type: ignore[method-assign]
        AWSCertificateManagerBackend._enclavekit_patched = True  # type: ignore[attr-defined]
