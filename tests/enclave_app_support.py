"""Real surroundings for enclave_app tests: local KMS (moto + our extension), the emulator's NSM
server and vsock-proxy, an IAM role with temporary credentials, and a PCR-bound KMS key.

Nothing here is a stand-in for the enclave program's own parts; everything the program talks to
is the real component it talks to in the emulator.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from moto.server import ThreadedMotoServer

from enclavekit.localenv import (
    LOCAL_ACCESS_KEY_ID,
    LOCAL_ACCOUNT,
    LOCAL_REGION,
    LOCAL_SECRET_ACCESS_KEY,
)
from enclavekit.pcr import Measurements
from enclavekit.pki import LocalPki
from enclavekit.provisioning import CertificateBundle, Credentials
from enclavekit.transport import PARENT_CID, EmulatedVsock
from local_backend.emulator.monitor import make_signer
from local_backend.emulator.nsm_server import BootMeasurements, NsmDevice, NsmServer
from local_backend.emulator.vsock_proxy import Allowlist, VsockProxy
from local_backend.moto_ext import kms as kms_ext
from local_backend.pytest_plugin import free_port
from local_backend.tls_front import TlsFront, endpoint_ca

ENCLAVE_CID = 16
INSTANCE_ID = "i-0123456789abcdef0"
MODULE_ID = f"{INSTANCE_ID}-enc0123456789abcdef"
MEASUREMENTS = Measurements(pcr0=bytes([1]) * 48, pcr1=bytes([2]) * 48, pcr2=bytes([3]) * 48)
OTHER_IMAGE = Measurements(pcr0=bytes([7]) * 48, pcr1=bytes([2]) * 48, pcr2=bytes([3]) * 48)
SECRET = b"the application secret \x00\xff"
DOMAIN = "app.example.test"
KMS_HOST = f"kms.{LOCAL_REGION}.amazonaws.com"
ROOT_ARN = f"arn:aws:iam::{LOCAL_ACCOUNT}:root"
ATTESTED_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue_chain(domain: str) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate, Any]:
    """(root, intermediate, leaf, leaf key): an ACM-like certificate for `domain`."""
    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str,
        key: Any,
        issuer_key: Any,
        issuer: x509.Name | None,
        ca: bool,
        san: str | None = None,
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer or _name(subject))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = cert(f"Root for {domain}", root_key, root_key, None, True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = cert(f"Intermediate for {domain}", mid_key, root_key, root.subject, True)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = cert(domain, leaf_key, mid_key, mid.subject, False, san=domain)
    return root, mid, leaf, leaf_key


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class KmsWorld:
    """The parent side of one emulated enclave host, against a real local KMS."""

    tmp: Path
    state: Path
    endpoint: str
    vsock_root: Path
    nsm_path: Path
    role_arn: str
    role_credentials: Credentials
    key_id: str
    secret_blob: bytes
    bundle: CertificateBundle
    ca_root: x509.Certificate
    leaf: x509.Certificate
    kms_ca: Path = Path()  # the endpoint TLS CA the enclave trusts (its platform CA)

    def client(self, service: str, **kw: Any) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=LOCAL_REGION,
            aws_access_key_id=LOCAL_ACCESS_KEY_ID,
            aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
            **kw,
        )

    def parent_vsock(self) -> EmulatedVsock:
        return EmulatedVsock(self.vsock_root, PARENT_CID)

    def enclave_vsock(self) -> EmulatedVsock:
        return EmulatedVsock(self.vsock_root, ENCLAVE_CID)

    def key_policy(self, measurements: Measurements = MEASUREMENTS) -> str:
        cond = {f"kms:RecipientAttestation:PCR{i}": measurements.hex(i) for i in (0, 1, 2)}
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "Admin",
                        "Effect": "Allow",
                        "Principal": {"AWS": ROOT_ARN},
                        "Action": "kms:*",
                        "Resource": "*",
                    },
                    {
                        "Sid": "Enclave",
                        "Effect": "Allow",
                        "Principal": {"AWS": self.role_arn},
                        "Action": ATTESTED_ACTIONS,
                        "Resource": "*",
                        "Condition": {"StringEqualsIgnoreCase": cond},
                    },
                ],
            }
        )


@contextlib.contextmanager
def nsm_device(
    path: Path,
    state: Path,
    *,
    measurements: Measurements = MEASUREMENTS,
    debug: bool = False,
    role_arn: str | None = None,
) -> Iterator[NsmServer]:
    """The emulator's NSM server for one enclave, on the Unix socket `path`."""
    boot = BootMeasurements(
        measurements=measurements, role_arn=role_arn, instance_id=INSTANCE_ID, debug_mode=debug
    )
    server = NsmServer(NsmDevice(MODULE_ID, boot, make_signer(state, MODULE_ID)), path).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def kms_world(tmp: Path) -> Iterator[KmsWorld]:
    """Local KMS on a free port, the parent's vsock-proxy on (3, 8000), the enclave's NSM."""
    state = tmp / "state"
    kms_ext.install(state)
    LocalPki.load_or_create(state)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://localhost:{port}"
    vsock_root = tmp / "vsock"
    (vsock_root / str(ENCLAVE_CID)).mkdir(parents=True)
    proxy = front = None
    try:
        admin = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=LOCAL_REGION,
            aws_access_key_id=LOCAL_ACCESS_KEY_ID,
            aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
        )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        role_name = f"enclave-host-{uuid.uuid4().hex[:8]}"  # moto's state is per process
        role_arn = admin.create_role(
            RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
        admin.put_role_policy(
            RoleName=role_name,
            PolicyName="random",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "kms:GenerateRandom", "Resource": "*"}
                    ],
                }
            ),
        )
        sts = boto3.client(
            "sts",
            endpoint_url=endpoint,
            region_name=LOCAL_REGION,
            aws_access_key_id=LOCAL_ACCESS_KEY_ID,
            aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
        )
        c = sts.assume_role(RoleArn=role_arn, RoleSessionName=INSTANCE_ID)["Credentials"]
        creds = Credentials(
            c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"].isoformat()
        )
        world = KmsWorld(
            tmp,
            state,
            endpoint,
            vsock_root,
            tmp / "nsm.sock",
            role_arn,
            creds,
            "",
            b"",
            None,
            None,
            None,
        )  # type: ignore[arg-type]
        kms = world.client("kms")
        world.key_id = kms.create_key(Policy=world.key_policy())["KeyMetadata"]["Arn"]
        world.secret_blob = kms.encrypt(KeyId=world.key_id, Plaintext=SECRET)["CiphertextBlob"]
        root, mid, leaf, leaf_key = issue_chain(DOMAIN)
        key_pem = leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        encrypted = kms.encrypt(KeyId=world.key_id, Plaintext=key_pem)["CiphertextBlob"]
        world.bundle = CertificateBundle(
            pem(leaf), pem(mid), base64.b64encode(encrypted).decode(), "kms-rsaes-oaep-sha256"
        )
        world.ca_root, world.leaf = root, leaf
        # KMS over TLS, as on AWS: the vsock-proxy carries the enclave's TLS to the TLS front
        ca = endpoint_ca(state)
        world.kms_ca = ca.directory / "root.pem"
        front = TlsFront(ca, ("127.0.0.1", port)).start()
        proxy = VsockProxy(
            8000,
            KMS_HOST,
            443,
            allowlist=Allowlist(None, "built-in default"),
            vsock=world.parent_vsock(),
            endpoint=endpoint,
            tls_endpoint=front.url,
        ).start()
        yield world
    finally:
        if proxy is not None:
            proxy.stop()
        if front is not None:
            front.stop()
        server.stop()
