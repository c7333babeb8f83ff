"""Attested Decrypt on the local KMS vs plain moto Decrypt, over real servers, same run.

Baseline: a stock moto 5.2.5 server (no extensions), root credentials, plain Decrypt.
Against it: the extended server (SigV4 check + key policy) plain Decrypt by root, and attested
Decrypt by an enclave role (document verified, policy with PCR conditions, CMS answer) — with
one document reused, and with a fresh document per call as the Nitro Enclaves SDK does.
Both servers run as separate processes of the same shape, started and stopped here.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parent.parent
N = int(os.environ.get("BENCH_KMS_N", "200"))
THREADS = 4
_SERVER = """
import sys
from pathlib import Path
from moto.server import ThreadedMotoServer
if sys.argv[2] != "-":
    from local_backend.moto_ext import kms
    kms.install(Path(sys.argv[2]))
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A moto server process; `state_dir=None` means stock moto (the baseline)."""

    def __init__(self, state_dir: Path | None) -> None:
        from enclavekit.localenv import strip_aws_env

        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self.port), str(state_dir or "-")],
            cwd=ROOT_DIR,
            env=strip_aws_env(os.environ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"bench server on port {self.port} did not start")
        self.endpoint = f"http://localhost:{self.port}"

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _client(endpoint: str, service: str, creds: dict[str, str] | None = None) -> Any:
    import boto3
    from botocore.config import Config

    from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_REGION, LOCAL_SECRET_ACCESS_KEY

    c = creds or {
        "aws_access_key_id": LOCAL_ACCESS_KEY_ID,
        "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY,
    }
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=LOCAL_REGION,
        config=Config(max_pool_connections=THREADS * 2),
        **c,
    )


def _measure(call: Callable[[], Any]) -> dict[str, float]:
    call()  # warm-up
    lat = []
    for _ in range(N):
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda _: call(), range(N)))
    conc = N / (time.perf_counter() - t0)
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1e3,
        "p95_ms": lat[int(0.95 * (N - 1))] * 1e3,
        "seq_per_s": N / sum(lat),
        "conc_per_s": conc,
    }


def _policy(*statements: dict[str, Any]) -> str:
    """An IAM policy document (JSON) of these statements."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _setup_attested(endpoint: str, state: Path) -> tuple[Any, str, bytes, Callable[[], bytes]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from enclavekit import attestation
    from enclavekit.attested_kms import pcr_key
    from enclavekit.pki import LocalPki

    iam = _client(endpoint, "iam")
    trust = _policy(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )
    role = iam.create_role(RoleName="bench-enclave", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    c = _client(endpoint, "sts").assume_role(RoleArn=role, RoleSessionName="bench")["Credentials"]
    pcrs = {i: bytes([i + 1]) * 48 for i in range(3)}
    decrypt = {"Principal": {"AWS": role}, "Action": "kms:Decrypt", "Resource": "*"}
    policy = _policy(
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            **decrypt,
            "Condition": {"StringEqualsIgnoreCase": {pcr_key(i): v.hex() for i, v in pcrs.items()}},
        },
        {
            "Effect": "Deny",
            **decrypt,
            "Condition": {"StringNotEqualsIgnoreCase": {pcr_key(0): pcrs[0].hex()}},
        },
    )
    root = _client(endpoint, "kms")
    key = root.create_key(Policy=policy)["KeyMetadata"]["Arn"]
    blob = root.encrypt(KeyId=key, Plaintext=b"bench secret")["CiphertextBlob"]
    role_kms = _client(
        endpoint,
        "kms",
        {
            "aws_access_key_id": c["AccessKeyId"],
            "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"],
        },
    )
    pki = LocalPki.load_or_create(state)
    spki = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    def document() -> bytes:
        signing, cert = pki.issue_leaf("i-0bench-enc0bench")
        return attestation.encode(
            module_id="i-0bench-enc0bench",
            pcrs=pcrs,
            signing_key=signing,
            certificate=cert,
            cabundle=pki.cabundle,
            public_key=spki,
        )

    return role_kms, key, blob, document


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-kms-") as tmp:
        state = Path(tmp) / "state"
        stock, ext = _Server(None), _Server(state)
        try:
            kms0 = _client(stock.endpoint, "kms")
            key0 = kms0.create_key()["KeyMetadata"]["KeyId"]
            blob0 = kms0.encrypt(KeyId=key0, Plaintext=b"bench secret")["CiphertextBlob"]
            role_kms, key, blob, document = _setup_attested(ext.endpoint, state)
            root1 = _client(ext.endpoint, "kms")
            doc = document()
            recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc}
            rows = [
                (
                    "stock moto Decrypt (baseline)",
                    _measure(lambda: kms0.decrypt(CiphertextBlob=blob0)),
                ),
                (
                    "local KMS Decrypt, root, policy checked",
                    _measure(lambda: root1.decrypt(CiphertextBlob=blob)),
                ),
                (
                    "local KMS attested Decrypt (one doc)",
                    _measure(
                        lambda: role_kms.decrypt(
                            CiphertextBlob=blob, KeyId=key, Recipient=recipient
                        )
                    ),
                ),
                (
                    "local KMS attested Decrypt (fresh doc/call)",
                    _measure(
                        lambda: role_kms.decrypt(
                            CiphertextBlob=blob,
                            KeyId=key,
                            Recipient={
                                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                "AttestationDocument": document(),
                            },
                        )
                    ),
                ),
            ]
        finally:
            stock.stop()
            ext.stop()
    base = rows[0][1]
    print(f"KMS Decrypt over the server, N={N} sequential + N on {THREADS} threads")
    print(
        f"{'case':46} {'p50 ms':>8} {'p95 ms':>8} {'seq/s':>8} {'conc/s':>8} "
        f"{'p50 x':>7} {'conc x':>7}"
    )
    for name, r in rows:
        print(
            f"{name:46} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['seq_per_s']:8.0f} "
            f"{r['conc_per_s']:8.0f} {r['p50_ms'] / base['p50_ms']:7.2f} "
            f"{r['conc_per_s'] / base['conc_per_s']:7.2f}"
        )


if __name__ == "__main__":
    main()
