"""AWS Private CA in templates, and ACM certificates a private CA issues, on moto's acm-pca.

moto has the acm-pca API (a CA with its own RSA key, its CSR, IssueCertificate with the
RootCACertificate/EndEntityCertificate templates, ImportCertificateAuthorityCertificate) but no
CloudFormation types, and its ACM signs a "private" certificate with a made-up key. Here:

- `AWS::ACMPCA::CertificateAuthority`: CreateCertificateAuthority; Ref and `Arn` are the ARN,
  `CertificateSigningRequest` its CSR (PEM). Deleting it marks the CA DELETED, as AWS does.
- `AWS::ACMPCA::Certificate`: IssueCertificate for a CSR (the CA's own, with the
  RootCACertificate template, makes the self-signed root); Ref and `Arn` are the certificate's
  ARN, `Certificate` its PEM.
- `AWS::ACMPCA::CertificateAuthorityActivation`: ImportCertificateAuthorityCertificate (the CA
  becomes ACTIVE); Ref is the CA's ARN, `CompleteCertificateChain` its certificate + chain.
- ACM certificates with `CertificateAuthorityArn` (template or RequestCertificate): a fresh key
  pair whose certificate the CA's own key signs, type PRIVATE, chain up to the CA's root. As on
  AWS, the CA must exist in the account and be ACTIVE: otherwise the certificate is FAILED
  with AWS's reason (PCA_RESOURCE_NOT_FOUND, PCA_INVALID_STATE), and CloudFormation fails the
  resource with it.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from moto.acm.models import CertBundle, acm_backends
from moto.acmpca.models import CertificateAuthority, acmpca_backends
from moto.cloudformation.exceptions import ValidationError
from moto.core.common_models import CloudFormationModel

from local_backend.moto_ext.cfn_resource import CfnCall, CfnResource

PRIVATE_DAYS = 395  # ACM's validity for a private certificate it requests from a CA
_SIGNING = {
    "SHA256WITHRSA": hashes.SHA256,
    "SHA384WITHRSA": hashes.SHA384,
    "SHA512WITHRSA": hashes.SHA512,
}


def _pem(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _required(kind: str, props: dict[str, Any], name: str) -> Any:
    value = props.get(name)
    if value in (None, ""):
        raise ValidationError(message=f"{kind}: property {name} is required")
    return value


def _authority(kind: str, call: CfnCall) -> CertificateAuthority:
    """The certificate authority the resource's `CertificateAuthorityArn` names."""
    arn = _required(kind, call.props, "CertificateAuthorityArn")
    backend = acmpca_backends[call.account_id][call.region]
    ca = backend.certificate_authorities.get(arn) if isinstance(arn, str) else None
    if ca is None:
        raise ValidationError(message=f"{kind}: certificate authority {arn} not found")
    return ca


@dataclass(eq=False)
class CfnCertificateAuthority(CfnResource, CloudFormationModel):
    CFN_TYPE = "AWS::ACMPCA::CertificateAuthority"
    CFN_REF = "ca.arn"
    CFN_ATTRIBUTES = frozenset({"Arn", "CertificateSigningRequest"})

    ca: CertificateAuthority

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Arn":
            return self.ca.arn
        return self.ca.csr.decode()

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CfnCertificateAuthority:
        kind, props = cls.CFN_TYPE, call.props
        account_id, region_name = call.account_id, call.region
        ca_type = _required(kind, props, "Type")
        if ca_type not in ("ROOT", "SUBORDINATE"):
            raise ValidationError(message=f"{kind}: Type must be ROOT or SUBORDINATE")
        subject = _required(kind, props, "Subject")
        backend = acmpca_backends[account_id][region_name]
        arn = backend.create_certificate_authority(
            certificate_authority_configuration={
                "KeyAlgorithm": _required(kind, props, "KeyAlgorithm"),
                "SigningAlgorithm": _required(kind, props, "SigningAlgorithm"),
                "Subject": subject,
            },
            revocation_configuration=props.get("RevocationConfiguration"),  # type: ignore[arg-type]
            certificate_authority_type=ca_type,
            security_standard=props.get("KeyStorageSecurityStandard"),
            tags=props.get("Tags") or [],
        )
        return cls(backend.certificate_authorities[arn])

    def delete(self, account_id: str, region_name: str) -> None:
        self.ca.status = "DELETED"


@dataclass(eq=False)
class CfnCertificate(CfnResource, CloudFormationModel):
    CFN_TYPE = "AWS::ACMPCA::Certificate"
    CFN_REF = "arn"
    CFN_ATTRIBUTES = frozenset({"Arn", "Certificate"})

    ca: CertificateAuthority
    arn: str

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Arn":
            return self.arn
        return self.ca.issued_certificates[self.arn].decode()

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CfnCertificate:
        kind, props = cls.CFN_TYPE, call.props
        ca = _authority(kind, call)
        csr = _pem(_required(kind, props, "CertificateSigningRequest"))
        _required(kind, props, "SigningAlgorithm")
        _required(kind, props, "Validity")
        template = props.get("TemplateArn")
        root = template == "arn:aws:acm-pca:::template/RootCACertificate/V1"
        if ca.status == "DELETED" or (not root and ca.status != "ACTIVE"):
            raise ValidationError(
                message=f"{kind}: certificate authority {ca.arn} is {ca.status}, not ACTIVE"
            )
        try:
            arn = ca.issue_certificate(base64.b64encode(csr), template)
        except ValueError as exc:
            raise ValidationError(
                message=f"{kind}: CertificateSigningRequest is not a PEM CSR ({exc})"
            ) from None
        return cls(ca, arn)

    def delete(self, account_id: str, region_name: str) -> None:
        return None  # AWS keeps issued certificates; deleting the resource only forgets it


@dataclass(eq=False)
class CfnCertificateAuthorityActivation(CfnResource, CloudFormationModel):
    CFN_TYPE = "AWS::ACMPCA::CertificateAuthorityActivation"
    CFN_REF = "ca.arn"
    CFN_ATTRIBUTES = frozenset({"CompleteCertificateChain"})

    ca: CertificateAuthority

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        return (self.ca.certificate_bytes + (self.ca.certificate_chain or b"")).decode()

    @classmethod
    def cfn_create(cls, call: CfnCall) -> CfnCertificateAuthorityActivation:
        kind, props = cls.CFN_TYPE, call.props
        ca = _authority(kind, call)
        cert = _pem(_required(kind, props, "Certificate"))
        chain = props.get("CertificateChain")
        try:
            ca.import_certificate_authority_certificate(cert, _pem(chain) if chain else None)
        except Exception as exc:  # noqa: BLE001 - moto's MalformedCertificateAuthority
            raise ValidationError(message=f"{kind}: Certificate: {exc}") from None
        if props.get("Status") == "DISABLED":
            ca.status = "DISABLED"
        return cls(ca)

    def delete(self, account_id: str, region_name: str) -> None:
        if self.ca.status == "ACTIVE":
            self.ca.status = "DISABLED"


# ------------------------------------------------------------------ ACM private certificates


def _leaf_key(key_algorithm: str) -> Any:
    if key_algorithm == "EC_prime256v1":
        return ec.generate_private_key(ec.SECP256R1())
    if key_algorithm == "EC_secp384r1":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pca_failure(account_id: str, region: str, ca_arn: str) -> str | None:
    """AWS's FailureReason for an ACM request to `ca_arn`, or None when the CA can issue."""
    ca = acmpca_backends[account_id][region].certificate_authorities.get(ca_arn)
    if ca is None:
        return "PCA_RESOURCE_NOT_FOUND"
    if ca.status != "ACTIVE":
        return "PCA_INVALID_STATE"
    return None


def issue_private_certificate(
    account_id: str,
    region: str,
    ca_arn: str,
    domain: str,
    sans: list[str],
    key_algorithm: str = "RSA_2048",
) -> CertBundle:
    """An ACM certificate of type PRIVATE, signed by the private CA's own key, stored in the
    account's ACM. The caller checked `pca_failure` first."""
    ca = acmpca_backends[account_id][region].certificate_authorities[ca_arn]
    assert ca.certificate is not None
    key = _leaf_key(key_algorithm)
    now = dt.datetime.now(dt.UTC)
    names = list(dict.fromkeys([domain, *sans]))
    signing = _SIGNING.get(
        str(ca.certificate_authority_configuration.get("SigningAlgorithm")), hashes.SHA256
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=PRIVATE_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, signing())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = CertBundle(
        account_id,
        cert.public_bytes(serialization.Encoding.PEM),
        key_pem,
        chain=None,
        region=region,
        cert_type="PRIVATE",
        cert_status="ISSUED",
        cert_authority_arn=ca_arn,
    )
    bundle.chain = ca.certificate_bytes + (ca.certificate_chain or b"")  # up to the CA's root
    acm_backends[account_id][region]._certificates[bundle.arn] = bundle
    return bundle


def _describe_with_failure(original: Any) -> Any:
    def describe(self: CertBundle) -> dict[str, Any]:
        out = original(self)
        reason = getattr(self, "failure_reason", None)
        if reason:
            out["Certificate"]["FailureReason"] = reason
        return out

    describe._enclavekit = True  # type: ignore[attr-defined]
    return describe


def install_failure_reason() -> None:
    """DescribeCertificate shows a FAILED certificate's FailureReason, as AWS does."""
    if not getattr(CertBundle.describe, "_enclavekit", False):
        CertBundle.describe = _describe_with_failure(CertBundle.describe)  # type: ignore[method-assign]
