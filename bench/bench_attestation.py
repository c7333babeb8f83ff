"""Attestation documents: encode+sign and verify throughput against raw ES384 in the same run.

The baseline is the bare cryptographic cost (one P-384/SHA-384 sign or verify of a message the
size of a document's Sig_structure); the ratio says what the document format, the CBOR and the
chain walk cost on top of it. "warm" verification reuses the parse and signature check of
byte-identical chain certificates (a verifier sees the same cabundle again and again); "cold"
clears those caches first, so it pays one ES384 verify per chain link as well.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit import attestation
from enclavekit.pki import LocalPki

DURATION = 1.0  # seconds per measurement


def _rate(fn: Callable[[], object], duration: float = DURATION) -> float:
    """Calls per second of fn over about `duration` seconds (after one warm-up call)."""
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        fn()
        count += 1
    return count / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        pki = LocalPki.load_or_create(state)
        module_id = "i-0123456789abcdef0-enc0123456789abcdef"
        key, cert = pki.issue_leaf(module_id)
        pcrs = {i: bytes([i + 1]) * 48 for i in range(16)}
        public_key = b"\x30" * 294  # an RSA-2048 SPKI's size, as the enclave program sends

        def encode() -> bytes:
            return attestation.encode(
                module_id=module_id,
                pcrs=pcrs,
                signing_key=key,
                certificate=cert,
                cabundle=pki.cabundle,
                public_key=public_key,
            )

        doc = encode()
        anchor = pki.trust_anchor()
        message = b"\xa5" * len(doc)
        raw_sig = key.sign(message, ec.ECDSA(hashes.SHA384()))
        pub = key.public_key()

        def verify_cold() -> object:
            # no reuse of earlier certificate parses or chain signature checks
            attestation._load_cert.cache_clear()
            attestation._check_issued.cache_clear()
            return attestation.verify(doc, anchor)

        raw_verify = _rate(lambda: pub.verify(raw_sig, message, ec.ECDSA(hashes.SHA384())))
        rows = [
            ("encode+sign doc/s", _rate(encode), "raw ES384 sign/s",
             _rate(lambda: key.sign(message, ec.ECDSA(hashes.SHA384())))),
            ("verify doc/s (warm)", _rate(lambda: attestation.verify(doc, anchor)),
             "raw ES384 verify/s", raw_verify),
            ("verify doc/s (cold)", _rate(verify_cold), "raw ES384 verify/s", raw_verify),
        ]  # fmt: skip
    print(f"document size {len(doc)} bytes, cabundle {len(pki.cabundle)} certs")
    print(f"{'operation':<20} {'ops/s':>10}   {'baseline':<20} {'ops/s':>10}   {'ratio':>6}")
    for name, rate, base_name, base in rows:
        print(f"{name:<20} {rate:>10.0f}   {base_name:<20} {base:>10.0f}   {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
