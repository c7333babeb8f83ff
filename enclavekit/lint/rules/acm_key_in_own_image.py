"""EK-ACM-003: an enclave host's own image claims the ACM certificate (set-up C).

ACM for Nitro Enclaves releases a certificate's private key (the association's KMS key) only
to AWS's own ACM enclave image, which serves it to nginx/httpd on the parent through PKCS#11.
An enclavekit host whose Metadata names both its own image and a certificate expects its image
to decrypt that key and terminate TLS itself: on AWS that Decrypt is AccessDeniedException and
the enclave never gets the key (the local endpoint denies it the same way).
"""

from __future__ import annotations

from collections.abc import Iterator

from enclavekit.lint.model import Finding, Rule, Severity
from enclavekit.lint.world import HOST_METADATA, World


def check(world: World) -> Iterator[Finding]:
    for host in world.hosts:
        meta = host.metadata or {}
        image, cert = meta.get("image"), meta.get("certificate")
        if not (isinstance(image, dict) and isinstance(cert, dict)):
            continue
        name = image.get("name") if isinstance(image.get("name"), str) else "its image"
        assoc = cert.get("association") if isinstance(cert.get("association"), str) else "?"
        yield RULE.finding(
            world.at(host, f"/Metadata/{HOST_METADATA}/certificate"),
            f"host {host.resource.logical_id}: its own image {name} claims the ACM certificate "
            f"of association {assoc}; ACM releases that key only to AWS's ACM enclave image, so "
            "the image's Decrypt is AccessDeniedException on AWS",
        )


RULE = Rule(
    id="EK-ACM-003",
    severity=Severity.ERROR,
    title="Enclave image claims the ACM certificate's key",
    explanation="ACM for Nitro Enclaves encrypts the certificate's private key under a KMS key "
    "whose policy releases Decrypt only to an attested enclave running AWS's ACM enclave image "
    "(the aws-nitro-enclaves-acm package's p11ne.eif); no user image can obtain it, so an image "
    "that expects the key to terminate TLS never serves HTTPS on AWS.",
    fix="Drop the image's claim on the certificate (EnclaveHost without certificate=), or use "
    "set-up A: EnclaveHost(certificate=...) without an image runs ACM's enclave and nginx on "
    "the parent; keep application secrets in your own image on a separate host.",
    check=check,
)
