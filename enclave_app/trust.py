"""Which CAs the enclave trusts for KMS: fixed by the platform and the image, never the parent.

On AWS the answer is the trust store inside the enclave image (botocore's CA bundle), which
is measured into PCR0/PCR2 like everything else in the image: whoever changes it changes the
measurements, and KMS then refuses the image. In the emulator the local endpoint's TLS CA
plays AWS's public CAs; the emulator (as the Nitro platform, like the NSM) places its
certificate at `PLATFORM_CA_PATH` inside the enclave's own read-only root. The parent has no
way to write there and no message field that changes it, so a parent-side fake KMS cannot be
made trustworthy (tests/security/test_enclave_channel.py shows one being refused).
"""

from __future__ import annotations

import os

PLATFORM_CA_PATH = "/run/enclavekit/kms-ca.pem"


def kms_verify(path: str = PLATFORM_CA_PATH) -> str | bool:
    """botocore's `verify`: the platform's CA file when there is one, else the image's bundle."""
    return path if os.path.isfile(path) else True
